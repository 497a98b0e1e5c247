package org.loramerge.engine;

import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/**
 * The GPU engine could not be used; the message says why and what to do (exit 7). Two cases are
 * kept apart: no usable device here at all (no driver, no device, too old, too little memory),
 * and a device that is there but the engine failed to start on it (its kernels or cuBLAS did not
 * load), which on a machine meant to run the GPU engine is a defect, not a reason to skip.
 */
public final class DeviceUnavailableException extends UserException {
    private static final long serialVersionUID = 1L;
    private final boolean devicePresent;

    private DeviceUnavailableException(String message, Throwable cause, boolean devicePresent) {
        super(message, cause);
        this.devicePresent = devicePresent;
    }

    /** No usable device here: no driver, no such device, an architecture or free memory the engine cannot use. */
    public static DeviceUnavailableException noDevice(String message, Throwable cause) {
        return new DeviceUnavailableException(message, cause, false);
    }

    /** A device is there, but the engine failed to start on it (kernels, cuBLAS, an unexpected error). */
    public static DeviceUnavailableException engineFailed(String message, Throwable cause) {
        return new DeviceUnavailableException(message, cause, true);
    }

    /** True when a device is there and the engine itself failed to start on it. */
    public boolean devicePresent() {
        return devicePresent;
    }

    @Override
    public ExitCode exitCode() {
        return ExitCode.DEVICE;
    }
}
