package org.loramerge.engine;

/**
 * A GPU engine's device ran out of memory while it computed something (an allocation, a stream or
 * a cuBLAS handle that needed memory the device did not have, however the driver reported it):
 * the environment, not the input. Work that has a host twin may run there instead ({@code
 * combine}'s dense Δ does); anything else fails with it, and the message says to free the device or
 * use the CPU.
 */
public final class DeviceOutOfMemoryException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public DeviceOutOfMemoryException(String device, Throwable cause) {
        super(device + " ran out of memory (" + cause.getMessage() + "); free memory on the device or use --device cpu", cause);
    }
}
