// Reference solutions for lesson 08 (lessons/08_initialization.cpp). Only the bodies between the
// markers are used: `make check N=08 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 08.1
    return std::sqrt(2.0 / fan_in);   // Var = 2/fan_in: ReLU keeps half, so fan_in·Var/2 = 1
// END EXERCISE

// BEGIN EXERCISE 08.2
    // a²/3 = 2/(fan_in + fan_out)  ⇒  a = √(6/(fan_in + fan_out))
    return std::sqrt(6.0 / (fan_in + fan_out));
// END EXERCISE

// BEGIN EXERCISE 08.3
    const Tensor h = relu(matmul(x, W));
    double out_square = 0, in_square = 0;
    for (real v : h.values()) out_square += double(v) * v;
    for (real v : x.values()) in_square += double(v) * v;
    return (out_square / double(h.numel())) / (in_square / double(x.numel()));
// END EXERCISE
