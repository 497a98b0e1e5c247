package org.loramerge.format;

import java.io.IOException;
import java.io.InputStream;
import java.util.Properties;

/**
 * loramerge's version: the jar manifest's Implementation-Version, or, where the classes are not in a
 * jar (tests, an IDE), the version Maven wrote into {@code org/loramerge/version.properties}. Written
 * into model cards and printed by {@code --version}.
 */
public final class ToolVersion {
    private static final String VERSION = find();

    private ToolVersion() {
    }

    /** The version, e.g. 0.1.0; "unknown" only for classes built without Maven. */
    public static String get() {
        return VERSION;
    }

    private static String find() {
        String v = ToolVersion.class.getPackage().getImplementationVersion();
        if (v != null) {
            return v;
        }
        try (InputStream in = ToolVersion.class.getResourceAsStream("/org/loramerge/version.properties")) {
            if (in != null) {
                Properties p = new Properties();
                p.load(in);
                String fromBuild = p.getProperty("version");
                if (fromBuild != null && !fromBuild.startsWith("${")) {
                    return fromBuild;
                }
            }
        } catch (IOException e) {
            // the resource is in the jar or classes folder; failing to read it leaves the version unknown
        }
        return "unknown";
    }
}
