// Reference solutions for lesson 13 (lessons/13_precision_memory.cpp). Only the bodies between
// the markers are used: `make check N=13 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 13.1
    std::uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    const std::uint32_t top = bits >> 16, low = bits & 0xffff;
    if ((bits & 0x7fffffff) > 0x7f800000)                       // NaN: keep the top half, a NaN
        return std::uint16_t((top & 0x7f) ? top : top | 0x40);
    const bool round_up = low > 0x8000 || (low == 0x8000 && (top & 1));
    return std::uint16_t(top + (round_up ? 1 : 0));   // a carry to the exponent is right, inf too
// END EXERCISE

// BEGIN EXERCISE 13.2
    if (!gradients_finite) {
        scale *= 0.5;
        good_steps = 0;
        return;
    }
    if (++good_steps == growth_interval) {
        scale *= 2;
        good_steps = 0;
    }
// END EXERCISE

// BEGIN EXERCISE 13.3
    BytesPerParameter b;
    b.weight = mixed_precision ? 2 : 4;
    b.gradient = mixed_precision ? 2 : 4;
    b.master = mixed_precision ? 4 : 0;   // the fp32 copy the optimizer updates
    b.optimizer = 4 * states;             // optimizer state stays fp32
    return b;
// END EXERCISE

// BEGIN EXERCISE 13.4
    std::size_t numbers = 1;   // the loss
    for (std::size_t l = 1; l < sizes.size(); ++l) {
        const bool last = l + 1 == sizes.size();
        numbers += std::size_t(last ? 1 : 2) * std::size_t(batch) * std::size_t(sizes[l]);
    }
    return numbers * sizeof(real);
// END EXERCISE
