package org.loramerge.quant;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.Locale;
import org.loramerge.format.DType;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;

/**
 * A bitsandbytes NF4 weight as a {@link QuantizedWeight}: its validated group ({@link Nf4Tensor})
 * and a decoder of its ranges ({@link Nf4Decoder}). Its stored codes are packed two to a byte, the
 * even element in the high nibble: {@link #storedCodes} of a range starts with the byte that holds
 * element {@code firstElement & ~1}.
 */
public final class Nf4Weight implements QuantizedWeight {
    private final Nf4Tensor tensor;
    private final Nf4Decoder decoder;

    Nf4Weight(Nf4Tensor tensor) throws IOException, QuantException {
        this.tensor = tensor;
        this.decoder = tensor.decoder();
    }

    /** The group of stored tensors and its quant state. */
    public Nf4Tensor tensor() {
        return tensor;
    }

    /** The decoder of ranges, with the nested tables a device needs to decode the absmax itself. */
    public Nf4Decoder decoder() {
        return decoder;
    }

    @Override
    public String weightName() {
        return tensor.weightName();
    }

    @Override
    public String kind() {
        return tensor.state().code().typeName();
    }

    @Override
    public DType dtype() {
        return tensor.dtype();
    }

    @Override
    public long[] shape() {
        return tensor.shape();
    }

    @Override
    public long numElements() {
        return tensor.numElements();
    }

    @Override
    public List<String> tensorNames() {
        return tensor.tensorNames();
    }

    @Override
    public SafetensorsFile file() {
        return tensor.weight().file();
    }

    @Override
    public String describe() {
        QuantState s = tensor.state();
        return String.format(Locale.ROOT, "%s (bitsandbytes), blocksize %d%s, %s", s.code(), s.blocksize(),
                s.isDoubleQuant() ? ", double-quantized" : "", s.dtype().torchName());
    }

    @Override
    public void dequantizeTo(long firstElement, int count, ByteBuffer dst) throws IOException {
        decoder.dequantizeTo(firstElement, count, dst);
    }

    @Override
    public MappedRegion storedCodes(long firstElement, int count) throws IOException {
        return decoder.packed(firstElement, count);
    }

    @Override
    public QuantizedOutput requantizedOutput() {
        return Nf4Output.requantizing(tensor.state());
    }

    @Override
    public String toString() {
        return tensor.toString();
    }
}
