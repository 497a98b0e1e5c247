package org.loramerge.engine;

import java.nio.charset.StandardCharsets;

/**
 * DARE's random drops, from a counter-based generator (docs/FORMATS.md §8): whether element
 * {@code e} of adapter {@code a}'s update of a tensor is kept depends only on (seed, tensor name,
 * a, e), so the result is the same on every engine, thread count and block size, and a GPU
 * kernel computes it with a few 64-bit integer operations.
 *
 * <p>The mixing function is SplitMix64's output function (Steele, Lea and Flood, "Fast splittable
 * pseudorandom number generators", 2014, with Stafford's "Mix13" constants), applied to a key plus
 * the counter times the golden-ratio increment γ, as SplitMix64 advances its state:
 * <pre>
 *   h   = FNV-1a 64 of the tensor name's UTF-8 bytes
 *   key = mix(seed ^ mix(h + (a + 1)·γ))
 *   u   = (mix(key + (e + 1)·γ) >>> 11) · 2^-53        (uniform in [0, 1), 53 bits)
 *   kept when u < D
 * </pre>
 * PEFT draws its masks with torch.bernoulli from torch's global generator; matching those bits
 * is not a goal (they depend on the device, the generator's state and the call order).
 */
public final class DareMask {
    /** The golden-ratio increment of SplitMix64. */
    public static final long GAMMA = 0x9E3779B97F4A7C15L;

    private DareMask() {
    }

    /** SplitMix64's output function. */
    public static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** FNV-1a, 64 bits, of the UTF-8 bytes of {@code name}. */
    public static long fnv1a64(String name) {
        long h = 0xCBF29CE484222325L;
        for (byte b : name.getBytes(StandardCharsets.UTF_8)) {
            h ^= b & 0xFF;
            h *= 0x100000001B3L;
        }
        return h;
    }

    /** The key of adapter {@code adapter}'s masks on tensor {@code name}. */
    public static long key(long seed, String name, int adapter) {
        return mix(seed ^ mix(fnv1a64(name) + (adapter + 1L) * GAMMA));
    }

    /** The uniform number of element {@code element} under {@code key}, in [0, 1). */
    public static double uniform(long key, long element) {
        return (mix(key + (element + 1) * GAMMA) >>> 11) * 0x1p-53;
    }

    /** Whether the element is kept at {@code density} (always, at density 1). */
    public static boolean keep(long key, long element, double density) {
        return density >= 1 || uniform(key, element) < density;
    }
}
