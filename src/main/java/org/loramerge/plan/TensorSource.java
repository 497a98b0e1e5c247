package org.loramerge.plan;

import java.io.IOException;
import java.nio.ByteBuffer;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;

/** Where a tensor's bytes come from: a base shard or the adapter file. */
public record TensorSource(SafetensorsFile file, TensorInfo info) {
    public DType dtype() {
        return info.dtype();
    }

    /** Reads the whole tensor (a small one: adapter factors, vectors) as doubles, exactly. */
    public double[] readDoubles() throws IOException {
        ByteBuffer b = file.readAll(info);
        int n = Math.toIntExact(info.numElements());
        double[] out = new double[n];
        switch (info.dtype()) {
            case F32:
                for (int i = 0; i < n; i++) {
                    out[i] = b.getFloat(i * 4);
                }
                break;
            case F64:
                for (int i = 0; i < n; i++) {
                    out[i] = b.getDouble(i * 8);
                }
                break;
            case BF16:
                for (int i = 0; i < n; i++) {
                    out[i] = Float.intBitsToFloat((b.getShort(i * 2) & 0xFFFF) << 16);
                }
                break;
            case F16: {
                org.loramerge.format.FloatFormat f = org.loramerge.format.FloatFormat.F16;
                for (int i = 0; i < n; i++) {
                    out[i] = f.decode(b.getShort(i * 2) & 0xFFFF);
                }
                break;
            }
            default:
                throw new IllegalStateException(info + " is not a floating-point tensor");
        }
        return out;
    }

    @Override
    public String toString() {
        return file.path().getFileName() + ":" + info.name();
    }
}
