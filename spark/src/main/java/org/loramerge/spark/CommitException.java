package org.loramerge.spark;

import java.io.IOException;

/** An output that the job will not overwrite or cannot trust; its message says what to do. */
final class CommitException extends IOException {
    private static final long serialVersionUID = 1L;

    CommitException(String message) {
        super(message);
    }
}
