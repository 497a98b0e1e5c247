package org.loramerge.format;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;
import static org.loramerge.testutil.TinyModels.replaceWithFifo;
import static org.loramerge.testutil.TinyModels.replaceWithLink;
import static org.loramerge.testutil.TinyModels.shardName;
import static org.loramerge.testutil.TinyModels.writeSparse;
import static org.loramerge.testutil.TinyModels.writeText;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.format.SafetensorsException.Reason;
import org.loramerge.testutil.TinyModels;

/**
 * What a model folder may make loramerge read: regular files only, links that stay in the folder
 * (or, for a Hugging Face cache snapshot, in its repository's blobs/), JSON of bounded size.
 */
class InputFolderTest {
    private static final Duration PROMPTLY = Duration.ofSeconds(20);

    @TempDir
    Path dir;

    private Path sharded;

    @BeforeEach
    void writeModel() {
        sharded = TinyModels.writeShardedModel(dir.resolve("sharded"),
                List.of(TinyModels.tinyLlama().subList(0, 3), TinyModels.tinyLlama().subList(3, 7)));
    }

    private SafetensorsException refused(Path model, boolean followSymlinks, Reason reason, Path offending) {
        SafetensorsException e = assertTimeoutPreemptively(PROMPTLY,
                () -> assertThrows(SafetensorsException.class, () -> Checkpoint.open(model, followSymlinks).close()));
        assertEquals(reason, e.reason(), e::getMessage);
        assertTrue(e.getMessage().contains(offending.toString()), e::getMessage);
        return e;
    }

    @ParameterizedTest
    @ValueSource(strings = {"config.json", ShardIndex.FILE_NAME, "model-00002-of-00002.safetensors", "tokenizer.json"})
    void namedPipeInAModelFolderIsRefusedInsteadOfBlocking(String name) {
        assumeTrue(TinyModels.hasMkfifo(), "no mkfifo here");
        Path fifo = replaceWithFifo(sharded.resolve(name));
        SafetensorsException e = refused(sharded, false, Reason.NOT_A_REGULAR_FILE, fifo);
        assertTrue(e.getMessage().contains("named pipe"), e::getMessage);
    }

    @Test
    void devZeroAsTheIndexIsRefusedEvenWhenLinksMayBeFollowed() {
        assumeTrue(Files.exists(Path.of("/dev/zero")));
        Path index = replaceWithLink(sharded.resolve(ShardIndex.FILE_NAME), Path.of("/dev/zero"));
        refused(sharded, false, Reason.OUTSIDE_FOLDER, index);
        SafetensorsException e = refused(sharded, true, Reason.NOT_A_REGULAR_FILE, index);
        assertTrue(e.getMessage().contains("character device"), e::getMessage);
    }

    @Test
    void indexLargerThanItsCapIsRefusedBeforeItIsRead() {
        Path index = writeSparse(sharded.resolve(ShardIndex.FILE_NAME), InputFolder.MAX_INDEX_BYTES + 1);
        SafetensorsException e = refused(sharded, false, Reason.TOO_LARGE, index);
        assertTrue(e.getMessage().contains("64 MB"), e::getMessage);
    }

    @Test
    void configLargerThanItsCapIsRefusedBeforeItIsRead() {
        Path config = writeSparse(sharded.resolve("config.json"), InputFolder.MAX_CONFIG_BYTES + 1);
        SafetensorsException e = refused(sharded, false, Reason.TOO_LARGE, config);
        assertTrue(e.getMessage().contains("16 MB"), e::getMessage);
    }

    @Test
    void shardLinkedToAFileOutsideTheFolderIsRefusedNamingWhereItPoints() throws Exception {
        Path outside = Files.move(sharded.resolve(shardName(1, 2)), dir.resolve("elsewhere.safetensors"));
        Path link = replaceWithLink(sharded.resolve(shardName(1, 2)), outside);
        SafetensorsException e = refused(sharded, false, Reason.OUTSIDE_FOLDER, link);
        assertTrue(e.getMessage().contains(outside.toRealPath().toString()) && e.getMessage().contains("--follow-symlinks"), e::getMessage);
        try (Checkpoint c = Checkpoint.open(sharded, true)) {
            assertEquals(7, c.tensors().size());
        }
    }

    @Test
    void tokenizerLinkedOutsideTheFolderIsRefusedBeforeAnythingIsCopied() throws Exception {
        Path secret = writeText(dir.resolve("secret.txt"), "root:x:0:0\n");
        Path link = replaceWithLink(sharded.resolve("tokenizer.json"), secret);
        refused(sharded, false, Reason.OUTSIDE_FOLDER, link);
        try (Checkpoint c = Checkpoint.open(sharded, true)) {
            assertEquals(List.of(link), c.nonWeightFiles());
        }
    }

    @Test
    void linkThatStaysInsideTheFolderIsRead() throws Exception {
        Path real = Files.move(sharded.resolve("config.json"), sharded.resolve("config.original.json"));
        replaceWithLink(sharded.resolve("config.json"), Path.of(real.getFileName().toString()));
        try (Checkpoint c = Checkpoint.open(sharded)) {
            assertEquals("llama", c.modelType());
        }
    }

    @Test
    void huggingFaceCacheSnapshotReadsItsBlobsAndNoOtherRepositorys() throws Exception {
        Path snapshot = TinyModels.asHuggingFaceCache(sharded, dir.resolve("hub"), "org/tiny");
        try (Checkpoint c = Checkpoint.open(snapshot)) {
            assertEquals(7, c.tensors().size());
        }
        // a blob of another repository of the same cache is outside this one
        Path other = TinyModels.asHuggingFaceCache(TinyModels.writeTinyLlama(dir.resolve("other")), dir.resolve("hub"), "org/other");
        Path foreign = other.resolve("config.json").toRealPath();
        Path link = replaceWithLink(snapshot.resolve("config.json"), foreign);
        refused(snapshot, false, Reason.OUTSIDE_FOLDER, link);
    }

    @Test
    void folderNamedSnapshotsWithoutBlobsGetsNoExemption() throws Exception {
        Path snapshots = Files.createDirectories(dir.resolve("repo").resolve("snapshots"));
        Path model = Files.move(sharded, snapshots.resolve("rev"));
        Path outside = Files.move(model.resolve("config.json"), dir.resolve("repo").resolve("config.json"));
        Path link = replaceWithLink(model.resolve("config.json"), outside);
        refused(model, false, Reason.OUTSIDE_FOLDER, link);
    }

    @Test
    void danglingLinkSaysTheDownloadIsIncomplete() {
        Path link = replaceWithLink(sharded.resolve(shardName(0, 2)), Path.of("..", "..", "blobs", "missing"));
        SafetensorsException e = refused(sharded, false, Reason.IO, link);
        assertTrue(e.getMessage().contains("download"), e::getMessage);
    }

    @Test
    void singleSafetensorsFileThatIsANamedPipeIsRefused() {
        assumeTrue(TinyModels.hasMkfifo(), "no mkfifo here");
        Path fifo = replaceWithFifo(dir.resolve("lonely.safetensors"));
        SafetensorsException e = assertTimeoutPreemptively(PROMPTLY, () -> assertThrows(SafetensorsException.class, () -> SafetensorsFile.open(fifo)));
        assertEquals(Reason.NOT_A_REGULAR_FILE, e.reason());
    }
}
