/**
 * loramerge's library API: {@link org.loramerge.api.LoraMerge} (merge, verify, inspect, quantize),
 * their options records and their immutable result records. This is the stable surface for JVM
 * users; the other packages are the implementation and may change between versions. Failures are
 * {@link org.loramerge.errors.UserException}s (see {@link org.loramerge.errors.ExitCode} for the
 * kinds) or {@link java.io.IOException}s.
 */
package org.loramerge.api;
