package org.loramerge.format;

import java.nio.file.Path;
import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/**
 * A safetensors file (or a shard index) that is malformed. Each reason mirrors one way the
 * reference implementation rejects a file (safetensors src/tensor.rs {@code SafeTensorError}),
 * plus the checks of a sharded checkpoint's index, and the rules every file of a model or adapter
 * folder passes before it is read ({@link InputFolder}).
 */
public final class SafetensorsException extends UserException {
    private static final long serialVersionUID = 1L;

    public enum Reason {
        /** The file is shorter than the 8-byte header length. */
        HEADER_TOO_SMALL,
        /** The header length is larger than 100,000,000 bytes. */
        HEADER_TOO_LARGE,
        /** The header length points past the end of the file. */
        INVALID_HEADER_LENGTH,
        /** The header is not valid UTF-8. */
        INVALID_HEADER_UTF8,
        /** The header does not start with '{' (after optional whitespace). */
        INVALID_HEADER_START,
        /** The header is not the JSON the format describes. */
        INVALID_HEADER_JSON,
        /** A tensor entry names a dtype the format does not know. */
        UNKNOWN_DTYPE,
        /** Two tensors share one name. */
        DUPLICATE_TENSOR,
        /** A tensor's data offsets leave a hole, overlap or run backwards. */
        INVALID_OFFSET,
        /** A tensor's byte size is not its element count times its dtype size. */
        TENSOR_INVALID_INFO,
        /** A sub-byte tensor does not end on a byte boundary. */
        MISALIGNED_SLICE,
        /** The data section is not exactly as long as the tensors say. */
        METADATA_INCOMPLETE_BUFFER,
        /** An element count or offset overflows 64 bits. */
        VALIDATION_OVERFLOW,
        /** The file could not be read. */
        IO,
        /** The shard index is malformed or names a file that is not a plain file name in the folder. */
        INVALID_INDEX,
        /** The shard index names a tensor that its shard does not hold, or a shard that is missing. */
        INDEX_MISMATCH,
        /** The file is a named pipe, a device, a socket or a folder: reading it could block forever or never end. */
        NOT_A_REGULAR_FILE,
        /** A symbolic link leads outside the folder (and the Hugging Face cache's blobs/), without --follow-symlinks. */
        OUTSIDE_FOLDER,
        /** A JSON file is larger than loramerge reads for its kind. */
        TOO_LARGE
    }

    private final Reason reason;
    private final Path path;
    private final String tensor;

    public SafetensorsException(Reason reason, Path path, String tensor, String detail) {
        super(format(reason, path, tensor, detail));
        this.reason = reason;
        this.path = path;
        this.tensor = tensor;
    }

    public SafetensorsException(Reason reason, Path path, String tensor, String detail, Throwable cause) {
        this(reason, path, tensor, detail);
        initCause(cause);
    }

    /** The message of a bad-input exception: "PATH: tensor 'NAME': DETAIL [REASON]" (path and tensor when known). */
    public static String format(Enum<?> reason, Path path, String tensor, String detail) {
        StringBuilder sb = new StringBuilder();
        if (path != null) {
            sb.append(path).append(": ");
        }
        if (tensor != null) {
            sb.append("tensor '").append(tensor).append("': ");
        }
        sb.append(detail).append(" [").append(reason).append(']');
        return sb.toString();
    }

    public Reason reason() {
        return reason;
    }

    public Path path() {
        return path;
    }

    @Override
    public Path file() {
        return path;
    }

    public String tensor() {
        return tensor;
    }

    /** A bad input file: exit 3. */
    @Override
    public ExitCode exitCode() {
        return ExitCode.BAD_INPUT;
    }
}
