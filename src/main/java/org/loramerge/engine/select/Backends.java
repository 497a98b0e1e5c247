package org.loramerge.engine.select;

import java.lang.reflect.InvocationTargetException;
import java.util.Locale;
import org.loramerge.engine.Backend;
import org.loramerge.engine.DeviceUnavailableException;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.errors.UsageException;

/**
 * Picks the engine for {@code --device}: the CPU engine, or the GPU engine, which is loaded by
 * name so that a CPU-only run never touches JCuda's classes. Above both engines, so neither
 * depends on the other's choice.
 */
public final class Backends {
    private Backends() {
    }

    /** A backend and, when {@code auto} fell back to the CPU, the reason. */
    public record Choice(Backend backend, String fallbackReason) {
    }

    /**
     * Opens the backend for {@code device}: {@code cpu}, {@code cuda}, {@code cuda:N}, or {@code auto}
     * (the GPU when a usable one is present, else the CPU).
     */
    public static Choice open(String device, int cpuThreads) throws DeviceUnavailableException, UsageException {
        return open(device, cpuThreads, false);
    }

    /**
     * {@link #open(String, int)} for a merge whose output takes one file's blocks from several threads
     * at once ({@code parallelWrites}: {@link org.loramerge.format.WriteMode#MIXED} or
     * {@link org.loramerge.format.WriteMode#MAPPED}), for which the GPU engine starts more workers.
     */
    public static Choice open(String device, int cpuThreads, boolean parallelWrites) throws DeviceUnavailableException, UsageException {
        String d = device.toLowerCase(Locale.ROOT);
        if (d.equals("cpu")) {
            return new Choice(new CpuBackend(cpuThreads), null);
        }
        if (d.equals("auto")) {
            try {
                return new Choice(openCuda(0, cpuThreads, parallelWrites), null);
            } catch (DeviceUnavailableException e) {
                return new Choice(new CpuBackend(cpuThreads), e.getMessage());
            }
        }
        if (d.equals("cuda") || d.startsWith("cuda:")) {
            int ordinal = 0;
            if (d.startsWith("cuda:")) {
                try {
                    ordinal = Integer.parseInt(d.substring(5));
                } catch (NumberFormatException e) {
                    throw new UsageException("--device " + device + ": expected cuda:N with N a device number");
                }
            }
            return new Choice(openCuda(ordinal, cpuThreads, parallelWrites), null);
        }
        throw new UsageException("--device " + device + ": expected auto, cpu, cuda or cuda:N");
    }

    /**
     * Starts the GPU driver for {@code device} in the background (the CUDA engine's
     * {@code CudaDevice.prestart}, by name) so that {@link #open} later finds it started: nothing
     * for {@code cpu} or a name {@link #open} would refuse. Never throws; what fails here fails
     * again in {@link #open}, which explains it. Returns the starting thread, or null.
     */
    public static Thread prestart(String device) {
        String d = device.toLowerCase(Locale.ROOT);
        int ordinal;
        if (d.equals("auto") || d.equals("cuda")) {
            ordinal = 0;
        } else if (d.startsWith("cuda:") && d.length() > 5 && d.substring(5).chars().allMatch(Character::isDigit) && d.length() < 15) {
            ordinal = Integer.parseInt(d.substring(5));
        } else {
            return null;
        }
        try {
            return (Thread) Class.forName("org.loramerge.engine.cuda.CudaDevice").getMethod("prestart", int.class).invoke(null, ordinal);
        } catch (ReflectiveOperationException | LinkageError | RuntimeException e) {
            // the engine is not usable here: open() says why
            return null;
        }
    }

    /** The number of CUDA devices visible here, 0 where the GPU engine cannot run (asked by name, as {@link #openCuda}). */
    public static int cudaDeviceCount() {
        try {
            Class<?> c = Class.forName("org.loramerge.engine.cuda.CudaDevice");
            return (Integer) c.getMethod("count").invoke(null);
        } catch (ReflectiveOperationException | LinkageError e) {
            return 0;
        }
    }

    /** The GPU engine on device {@code ordinal}; loaded by name so that the CPU engine never needs JCuda's classes. */
    public static Backend openCuda(int ordinal, int cpuThreads) throws DeviceUnavailableException {
        return openCuda(ordinal, cpuThreads, false);
    }

    /** {@link #openCuda(int, int)}, with more workers for an output that takes {@code parallelWrites}. */
    public static Backend openCuda(int ordinal, int cpuThreads, boolean parallelWrites) throws DeviceUnavailableException {
        try {
            Class<?> c = Class.forName("org.loramerge.engine.cuda.CudaBackend");
            return (Backend) c.getMethod("open", int.class, int.class, boolean.class).invoke(null, ordinal, cpuThreads, parallelWrites);
        } catch (InvocationTargetException e) {
            Throwable cause = e.getCause();
            if (cause instanceof DeviceUnavailableException) {
                throw (DeviceUnavailableException) cause;
            }
            throw DeviceUnavailableException.engineFailed("the CUDA engine failed to start: " + cause, cause);
        } catch (ReflectiveOperationException | LinkageError e) {
            throw DeviceUnavailableException.engineFailed("the CUDA engine is not usable here (" + e + "); use --device cpu", e);
        }
    }
}
