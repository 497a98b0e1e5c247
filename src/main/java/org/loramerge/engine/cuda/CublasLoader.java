package org.loramerge.engine.cuda;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.TimeUnit;

/**
 * Makes cuBLAS loadable for JCublas 12.0.0, whose native library needs {@code libcublas.so.12}.
 * Where the system has cuBLAS 12, nothing is done. Where it has only cuBLAS 13 (CUDA 13 hosts),
 * the forwarding library shipped in the jar (native/, built by CMakeLists.txt) is loaded first:
 * its SONAME is {@code libcublas.so.12} and it forwards every symbol JCublas imports to
 * {@code libcublas.so.13}, so the dynamic linker satisfies JCublas's dependency with it.
 */
final class CublasLoader {
    private static final String FORWARDER = "/org/loramerge/native/linux-x86_64/libcublas.so.12";
    private static String state;

    private CublasLoader() {
    }

    /** What was done, for the user: "system cuBLAS 12" or "cuBLAS 13 through the forwarding library". */
    static synchronized String ensureLoaded() throws IOException {
        if (state != null) {
            return state;
        }
        Path cublas13 = forwardingTarget(searchDirs());
        if (cublas13 == null) {
            state = "system cuBLAS 12";
            return state;
        }
        Path lt = cublas13.resolveSibling("libcublasLt.so.13");
        if (Files.exists(lt)) {
            System.load(lt.toString()); // cuBLAS 13's own dependency, from the same folder
        }
        System.load(cublas13.toString()); // now dlopen("libcublas.so.13") finds it by its SONAME
        Path dir = Files.createTempDirectory("loramerge-native");
        Path forwarder = dir.resolve("libcublas.so.12");
        try (InputStream in = CublasLoader.class.getResourceAsStream(FORWARDER)) {
            if (in == null) {
                throw new IOException("the cuBLAS 12 forwarding library is missing from the jar; rebuild with scripts/native/build-native.sh");
            }
            Files.copy(in, forwarder, StandardCopyOption.REPLACE_EXISTING);
        }
        forwarder.toFile().deleteOnExit();
        dir.toFile().deleteOnExit();
        System.load(forwarder.toString());
        state = "cuBLAS 13 (" + cublas13 + ") through loramerge's libcublas.so.12 forwarder";
        return state;
    }

    /**
     * Where cuBLAS 13 is when the forwarder is needed, or null when a real cuBLAS 12 is there
     * (then JCublas links it and the forwarder must not shadow it).
     */
    static Path forwardingTarget(List<Path> dirs) throws IOException {
        if (find(dirs, "libcublas.so.12") != null) {
            return null;
        }
        Path cublas13 = find(dirs, "libcublas.so.13");
        if (cublas13 == null) {
            throw new IOException("neither libcublas.so.12 nor libcublas.so.13 was found (searched LD_LIBRARY_PATH, the ldconfig cache, "
                    + "CUDA_HOME and /usr/local/cuda*); install the CUDA toolkit's cuBLAS or add its lib64 folder to LD_LIBRARY_PATH");
        }
        return cublas13;
    }

    static List<Path> searchDirs() {
        Set<Path> dirs = new LinkedHashSet<>();
        String ld = System.getenv("LD_LIBRARY_PATH");
        if (ld != null) {
            for (String d : ld.split(":")) {
                if (!d.isEmpty()) {
                    dirs.add(Paths.get(d));
                }
            }
        }
        for (String env : new String[] {"CUDA_HOME", "CUDA_PATH"}) {
            String v = System.getenv(env);
            if (v != null) {
                dirs.add(Paths.get(v, "lib64"));
                dirs.add(Paths.get(v, "lib"));
            }
        }
        dirs.addAll(ldconfigDirs());
        dirs.add(Paths.get("/usr/local/cuda/lib64"));
        try (var s = Files.newDirectoryStream(Paths.get("/usr/local"), "cuda-*")) {
            for (Path p : s) {
                dirs.add(p.resolve("lib64"));
                dirs.add(p.resolve("targets/x86_64-linux/lib"));
            }
        } catch (IOException ignored) {
            // no /usr/local/cuda-* folders
        }
        dirs.add(Paths.get("/usr/lib/x86_64-linux-gnu"));
        dirs.add(Paths.get("/usr/lib64"));
        return new ArrayList<>(dirs);
    }

    private static List<Path> ldconfigDirs() {
        List<Path> out = new ArrayList<>();
        for (String exe : new String[] {"/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"}) {
            try {
                Process p = new ProcessBuilder(exe, "-p").redirectErrorStream(true).start();
                String text = new String(p.getInputStream().readAllBytes());
                p.waitFor(5, TimeUnit.SECONDS);
                for (String line : text.split("\n")) {
                    int arrow = line.indexOf("=> ");
                    if (line.contains("libcublas") && arrow > 0) {
                        out.add(Paths.get(line.substring(arrow + 3).trim()).getParent());
                    }
                }
                return out;
            } catch (IOException | InterruptedException e) {
                // try the next location of ldconfig
            }
        }
        return out;
    }

    static Path find(List<Path> dirs, String name) {
        for (Path d : dirs) {
            Path p = d.resolve(name);
            if (Files.exists(p)) {
                return p;
            }
        }
        return null;
    }
}
