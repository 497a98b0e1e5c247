package org.loramerge.spark;

import java.io.Serializable;
import java.util.List;

/**
 * One manifest line as a task receives it: its number, and its locations qualified on the driver
 * (a relative path is the manifest folder's). The line's other choices come from the manifest
 * text, parsed again in the task.
 */
record LineSpec(int line, String written, String base, List<String> adapters, String out) implements Serializable {
    LineSpec {
        adapters = List.copyOf(adapters);
    }
}
