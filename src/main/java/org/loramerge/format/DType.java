package org.loramerge.format;

import java.util.Locale;

/**
 * The tensor element types of the safetensors format, spelled as the format spells them
 * (safetensors src/tensor.rs {@code Dtype}). Sub-byte types carry their size in bits.
 */
public enum DType {
    BOOL(8), U8(8), I8(8), I16(16), U16(16), F16(16), BF16(16), I32(32), U32(32), F32(32),
    F64(64), I64(64), U64(64), C64(64),
    F8_E5M2(8), F8_E4M3(8), F8_E8M0(8), F8_E4M3FNUZ(8), F8_E5M2FNUZ(8),
    F4(4), F6_E2M3(6), F6_E3M2(6);

    private final int bits;

    DType(int bits) {
        this.bits = bits;
    }

    public int bits() {
        return bits;
    }

    /** Bytes per element; only for byte-sized types. */
    public int sizeInBytes() {
        if (bits % 8 != 0) {
            throw new IllegalStateException(this + " is a sub-byte type");
        }
        return bits / 8;
    }

    /** The types the merge arithmetic reads and writes. Every other type passes through untouched. */
    public boolean isMergeable() {
        return this == F32 || this == F16 || this == BF16;
    }

    /** Parses the format's spelling; returns null for an unknown name. */
    public static DType parse(String name) {
        try {
            return valueOf(name);
        } catch (IllegalArgumentException e) {
            return null;
        }
    }

    /** Parses a user's or config.json's spelling: bf16, bfloat16, float16, fp16, f32, float32... */
    public static DType parseUserName(String name) {
        switch (name.toLowerCase(Locale.ROOT)) {
            case "bf16": case "bfloat16": return BF16;
            case "f16": case "fp16": case "float16": case "half": return F16;
            case "f32": case "fp32": case "float32": case "float": return F32;
            default: return null;
        }
    }

    /** The name transformers writes into config.json's {@code torch_dtype}/{@code dtype}. */
    public String torchName() {
        switch (this) {
            case BF16: return "bfloat16";
            case F16: return "float16";
            case F32: return "float32";
            default: throw new IllegalStateException(this + " has no torch dtype name here");
        }
    }
}
