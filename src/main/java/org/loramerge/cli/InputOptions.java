package org.loramerge.cli;

import picocli.CommandLine.Option;

/** The option every command that reads model or adapter folders shares. */
final class InputOptions {
    @Option(names = "--follow-symlinks",
            description = "read files of the input folders wherever their symbolic links lead; by default a link may lead only "
                    + "inside its folder, or from a Hugging Face cache snapshot into that cache repository's blobs/")
    boolean followSymlinks;
}
