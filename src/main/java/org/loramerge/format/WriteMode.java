package org.loramerge.format;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;

/**
 * How the threads that write a safetensors file's blocks at their offsets ({@link SafetensorsWriter#writeAt})
 * put them there. Linux takes one buffered write into a file at a time (the file's inode lock, on tmpfs,
 * ext4 and XFS alike), so positional writes into one file queue behind each other, about 2 GB/s a file on
 * tmpfs; copies into memory mappings of the blocks' places go on at once, but each fills its pages by
 * faults (a page allocated and zeroed every 4 KiB), at under 1 GB/s a thread.
 */
public enum WriteMode {
    /** One positional write into the file at a time (what a disk wants: the disk bounds it anyway). */
    POSITIONAL,
    /** Every block copied into a mapping of its place. */
    MAPPED,
    /**
     * A positional write while no other thread writes the file, and a copy into a mapping of the block's
     * place while one does: the file always has one thread writing at the positional rate, and the others
     * add what their page faults carry instead of queueing. For files in memory (tmpfs), where nothing but
     * the kernel's bookkeeping bounds the writes.
     */
    MIXED,
    /** {@link #MIXED} into a file system in memory (tmpfs, ramfs), {@link #POSITIONAL} elsewhere. */
    AUTO;

    /** The mode named {@code name} (case ignored; {@code pwrite} is {@link #POSITIONAL}), or null when none is. */
    public static WriteMode parse(String name) {
        String n = name.trim().toLowerCase(Locale.ROOT);
        return switch (n) {
            case "pwrite", "positional" -> POSITIONAL;
            case "mapped" -> MAPPED;
            case "mixed" -> MIXED;
            case "auto" -> AUTO;
            default -> null;
        };
    }

    /** Whether a file written this way may be written through memory mappings, by several threads at once. */
    public boolean maps() {
        return this == MAPPED || this == MIXED;
    }

    /**
     * This mode for files in {@code dir}: {@link #AUTO} resolved by the type of the file system holding it
     * ({@link #POSITIONAL} where that cannot be found, as in some containers), any other mode as it is.
     */
    public WriteMode resolve(Path dir) {
        if (this != AUTO) {
            return this;
        }
        try {
            return inMemory(Files.getFileStore(dir).type()) ? MIXED : POSITIONAL;
        } catch (IOException | RuntimeException e) {
            return POSITIONAL;
        }
    }

    /** Whether a file system of this type (as {@link java.nio.file.FileStore#type} names it) keeps its files in memory. */
    static boolean inMemory(String fileSystemType) {
        return fileSystemType.equals("tmpfs") || fileSystemType.equals("ramfs");
    }
}
