// Reference solutions for lesson 07 (lessons/07_lr_schedules.cpp). Only the bodies between the
// markers are used: `make check N=07 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 07.1
    if (step < warmup) return lr_max * double(step) / double(warmup);   // linear ramp from 0
    if (step > total) return lr_min;                                    // after the end: floor
    const double progress = double(step - warmup) / double(total - warmup);   // 0 → 1
    const double pi = std::acos(-1.0);
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + std::cos(pi * progress));
// END EXERCISE

// BEGIN EXERCISE 07.2
    if (step < warmup) return lr_max * double(step) / double(warmup);
    return lr_max * std::sqrt(double(warmup) / double(step));   // 1/√step decay, peak at warmup
// END EXERCISE

// BEGIN EXERCISE 07.3
    if (lrs.size() != final_losses.size() || lrs.empty())
        throw std::invalid_argument("best_learning_rate: need one final loss per lr, at least one");
    int best = -1;
    for (std::size_t i = 0; i < lrs.size(); ++i) {
        if (!std::isfinite(final_losses[i])) continue;   // diverged: NaN or inf
        if (best < 0 || final_losses[i] < final_losses[best]) best = int(i);
    }
    if (best < 0) throw std::invalid_argument("best_learning_rate: every run diverged");
    return lrs[best];
// END EXERCISE
