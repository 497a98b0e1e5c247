package org.loramerge.adapter;

import java.nio.file.Path;
import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/** A PEFT adapter that cannot be merged as it is: a bad config, a key form we do not know, a refused feature. */
public final class AdapterException extends UserException {
    private static final long serialVersionUID = 1L;

    public enum Reason {
        /** adapter_config.json is missing, not JSON, or has a field of the wrong type. */
        INVALID_CONFIG,
        /** The adapter is not a LoRA adapter, or uses a feature whose merge changes the model in ways we do not reproduce. */
        UNSUPPORTED,
        /** The weights are a pickle ({@code adapter_model.bin}). */
        PICKLE,
        /** A key of the adapter file has a form PEFT does not write. */
        UNKNOWN_KEY,
        /** lora_A without lora_B or the other way round. */
        MISSING_PARTNER,
        /** An adapter key names a module or tensor the base model does not have. */
        NO_SUCH_BASE_TENSOR,
        /** Shapes of the adapter and the base do not fit together. */
        SHAPE_MISMATCH,
        /** A base tensor the adapter changes is not floating point (an integer or FP8 dtype), so there is nothing to merge into. */
        BASE_DTYPE,
        /** The config and the weights disagree (rank, DoRA, targeting). */
        CONFIG_MISMATCH,
        /** The adapter changes no tensor of the base (an empty adapter file): a merge would only copy the base. */
        NO_CHANGE,
        /**
         * A regular expression of the config (target_modules, exclude_modules, layers_pattern,
         * rank_pattern, alpha_pattern keys) that Python's re rejects, or that cannot be matched in
         * linear time (backreferences, lookaround) or is too large to match in bounded time.
         */
        REGEX
    }

    private final Reason reason;
    private final Path path;

    public AdapterException(Reason reason, Path path, String message) {
        super((path == null ? "" : path + ": ") + message + " [" + reason + "]");
        this.reason = reason;
        this.path = path;
    }

    /** The adapter folder or file, when known. */
    @Override
    public Path file() {
        return path;
    }

    public Reason reason() {
        return reason;
    }

    /** A bad input file: exit 3. */
    @Override
    public ExitCode exitCode() {
        return ExitCode.BAD_INPUT;
    }
}
