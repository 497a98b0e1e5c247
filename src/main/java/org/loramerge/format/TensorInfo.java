package org.loramerge.format;

import java.util.Arrays;

/**
 * One tensor entry of a safetensors header. Offsets are absolute file positions of the data.
 */
public final class TensorInfo {
    private final String name;
    private final DType dtype;
    private final long[] shape;
    private final long dataStart;
    private final long sizeInBytes;

    public TensorInfo(String name, DType dtype, long[] shape, long dataStart, long sizeInBytes) {
        this.name = name;
        this.dtype = dtype;
        this.shape = shape.clone();
        this.dataStart = dataStart;
        this.sizeInBytes = sizeInBytes;
    }

    public String name() {
        return name;
    }

    public DType dtype() {
        return dtype;
    }

    public long[] shape() {
        return shape.clone();
    }

    public int rank() {
        return shape.length;
    }

    public long dim(int i) {
        return shape[i];
    }

    /** Absolute position of the first data byte in the file. */
    public long dataStart() {
        return dataStart;
    }

    public long sizeInBytes() {
        return sizeInBytes;
    }

    public long numElements() {
        return numElements(shape);
    }

    /** Rows when the tensor is seen as a matrix [shape[0], product of the rest]; 1 for a scalar. */
    public long rows() {
        return shape.length == 0 ? 1 : shape[0];
    }

    /** Elements per row when the tensor is seen as a matrix [shape[0], product of the rest]. */
    public long rowLength() {
        long n = 1;
        for (int i = 1; i < shape.length; i++) {
            n *= shape[i];
        }
        return shape.length == 0 ? 1 : n;
    }

    public static long numElements(long[] shape) {
        long n = 1;
        for (long d : shape) {
            n = Math.multiplyExact(n, d);
        }
        return n;
    }

    public static String shapeString(long[] shape) {
        return Arrays.toString(shape);
    }

    @Override
    public String toString() {
        return name + " " + dtype + shapeString(shape);
    }
}
