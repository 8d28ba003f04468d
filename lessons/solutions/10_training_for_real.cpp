// Reference solutions for lesson 10 (lessons/10_training_for_real.cpp). Only the bodies between
// the markers are used: `make check N=10 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 10.1
    if (logits.rank() != 2) throw std::invalid_argument("accuracy: logits must be [B, C]");
    const int B = logits.dim(0), C = logits.dim(1);
    if (B == 0 || std::size_t(B) != labels.size())
        throw std::invalid_argument("accuracy: need one label per row, and at least one row");
    int correct = 0;
    for (int i = 0; i < B; ++i) {
        const real* row = logits.values().data() + std::size_t(i) * std::size_t(C);
        int predicted = 0;
        for (int c = 1; c < C; ++c)
            if (row[c] > row[predicted]) predicted = c;   // strictly greater: ties keep the first
        correct += predicted == labels[std::size_t(i)];
    }
    return double(correct) / B;
// END EXERCISE

// BEGIN EXERCISE 10.2
    if (step_end.empty() || window < 1)
        throw std::invalid_argument("throughput: need one step or more and a window of 1 or more");
    const std::size_t n = step_end.size(), w = std::min(std::size_t(window), n);
    const double window_start = n > w ? step_end[n - 1 - w] : 0.0;   // the start of the window
    const double per_step = (step_end[n - 1] - window_start) / double(w);
    return {batch_size / per_step, double(total_steps - long(n)) * per_step};
// END EXERCISE

// BEGIN EXERCISE 10.3
    if (val_loss.empty() || patience < 1)
        throw std::invalid_argument("early_stopping: need a loss curve and patience >= 1");
    double best = val_loss[0];
    int best_epoch = 0, waited = 0;
    for (int e = 1; e < int(val_loss.size()); ++e) {
        if (val_loss[std::size_t(e)] < best - min_delta) {   // a real improvement: remember it
            best = val_loss[std::size_t(e)];
            best_epoch = e;
            waited = 0;
        } else if (++waited >= patience) {                    // patience used up: stop here
            return {e, best_epoch};
        }
    }
    return {-1, best_epoch};
// END EXERCISE
