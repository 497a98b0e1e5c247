package org.loramerge.batch;

/**
 * A manifest line that cannot run as written: malformed JSON, an unknown key, a value that does not
 * parse, or (found when the batch checks its inputs) a folder that does not exist.
 *
 * @param line    the line's number in the manifest, from 1
 * @param message what is wrong, naming {@code source:line} and the key, and what to do
 */
public record ManifestProblem(int line, String message) {
}
