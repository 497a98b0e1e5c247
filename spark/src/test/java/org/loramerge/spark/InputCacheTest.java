package org.loramerge.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The executor's copies of inputs on a store that is not local ({@link ObjectStoreFileSystem}). */
class InputCacheTest {
    @TempDir
    Path tmp;

    private static Configuration conf() {
        Configuration c = new Configuration(false);
        c.set("fs.objstore.impl", ObjectStoreFileSystem.class.getName());
        c.setBoolean("fs.objstore.impl.disable.cache", true);
        return c;
    }

    @Test
    void aCopySharedByTwoTasksIsKeptUntilTheLastGivesItBackAndThenDeleted() throws Exception {
        Path input = tmp.resolve("store/adapter");
        Files.createDirectories(input);
        Files.writeString(input.resolve("adapter_config.json"), "{}");
        Files.writeString(input.resolve("adapter_model.safetensors"), "weights");
        org.apache.hadoop.fs.Path location = new org.apache.hadoop.fs.Path(ObjectStoreFileSystem.location(input));
        Path work = tmp.resolve("work");

        Path first = InputCache.local(location, conf(), work);
        Path second = InputCache.local(location, conf(), work);
        assertEquals(first, second, "the two tasks share one copy");
        assertEquals("weights", Files.readString(first.resolve("adapter_model.safetensors")));

        InputCache.release(first);
        assertTrue(Files.isRegularFile(second.resolve("adapter_model.safetensors")), "the copy stays while a task uses it");
        InputCache.release(second);
        assertTrue(Files.notExists(first), "the last task to give the copy back deletes it");

        Path again = InputCache.local(location, conf(), work);
        assertEquals("weights", Files.readString(again.resolve("adapter_model.safetensors")), "a later task copies the input anew");
        InputCache.release(again);
        assertTrue(Files.notExists(again));
    }

    @Test
    void aLocalInputIsUsedInPlaceAndNeverDeleted() throws Exception {
        Path input = tmp.resolve("adapter");
        Files.createDirectories(input);
        Files.writeString(input.resolve("adapter_config.json"), "{}");
        Path local = InputCache.local(new org.apache.hadoop.fs.Path(input.toUri()), conf(), tmp.resolve("work"));
        assertEquals(input, local);
        InputCache.release(local);
        assertTrue(Files.isRegularFile(input.resolve("adapter_config.json")));
    }
}
