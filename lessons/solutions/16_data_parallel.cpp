// Reference solutions for lesson 16 (lessons/16_data_parallel.cpp). Only the bodies between the
// markers are used: `make check N=16 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 16.1
    if (global_windows < 1 || local_windows < 0 || local_windows > global_windows)
        throw std::invalid_argument("average_gradients: needs 0 <= local_windows <= "
                                    "global_windows and global_windows >= 1, got " +
                                    std::to_string(local_windows) + " of " +
                                    std::to_string(global_windows));
    for (real& g : grad) g = g * real(local_windows);   // n_r·g_r: the gradient of the rank's sum
    all_reduce_sum(grad);                               // Σ_r n_r·g_r, the same on every rank
    for (real& g : grad) g = g / real(global_windows);  // ÷ B: the global batch's mean
// END EXERCISE

// BEGIN EXERCISE 16.2
    if (ranks < 1 || rank < 0 || rank >= ranks)
        throw std::invalid_argument("zero_slice: needs ranks >= 1 and 0 <= rank < ranks, got "
                                    "rank " + std::to_string(rank) + " of " +
                                    std::to_string(ranks));
    const std::size_t base = n / std::size_t(ranks), extra = n % std::size_t(ranks),
                      r = std::size_t(rank);
    Bounds b;
    b.begin = r * base + std::min(r, extra);   // the ranks before r, with their extra ones
    b.end = b.begin + base + (r < extra ? 1 : 0);
    return b;
// END EXERCISE
