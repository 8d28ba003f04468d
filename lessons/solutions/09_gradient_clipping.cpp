// Reference solutions for lesson 09 (lessons/09_gradient_clipping.cpp). Only the bodies between the
// markers are used: `make check N=09 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 09.1
    double squares = 0;
    for (const Tensor& p : params)
        for (real g : p.grad()) squares += double(g) * g;   // an empty grad() adds nothing
    return std::sqrt(squares);
// END EXERCISE

// BEGIN EXERCISE 09.2
    double squares = 0;
    for (const Tensor& p : params)
        for (real g : p.grad()) squares += double(g) * g;
    const double norm = std::sqrt(squares);
    if (norm > max_norm) {
        const double scale = max_norm / norm;   // the same factor everywhere: direction kept
        for (const Tensor& p : params)
            for (real& g : p.grad()) g = real(g * scale);
    }
    return norm;
// END EXERCISE

// BEGIN EXERCISE 09.3
    if (c <= 0) throw std::invalid_argument("value_clip_cosine: c must be positive");
    double dot = 0, gg = 0, hh = 0;
    for (double gi : g) {
        const double hi = std::min(std::max(gi, -c), c);   // clip this component alone
        dot += gi * hi;
        gg += gi * gi;
        hh += hi * hi;
    }
    if (gg == 0) throw std::invalid_argument("value_clip_cosine: g is empty or zero");
    return dot / std::sqrt(gg * hh);
// END EXERCISE
