// Reference solutions for lesson 15 (lessons/15_gpt.cpp). Only the bodies between the markers
// are used: `make check N=15 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 15.1
    if (logits.empty() || k < 1)
        throw std::invalid_argument("top_k_filter: needs one logit or more and k >= 1");
    for (double z : logits)
        if (std::isnan(z)) throw std::invalid_argument("top_k_filter: a logit is NaN");
    std::vector<double> kept = logits;
    if (std::size_t(k) >= logits.size()) return kept;   // nothing to remove
    std::vector<double> sorted = logits;
    std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(),
                     std::greater<double>());   // sorted[k − 1] is now the k-th largest
    const double kth = sorted[std::size_t(k - 1)];
    for (double& z : kept)
        if (z < kth) z = -INFINITY;   // strictly below: a tie with the k-th largest stays
    return kept;
// END EXERCISE

// BEGIN EXERCISE 15.2
    DecayGroups groups;
    std::vector<std::string> seen;
    for (const auto& [name, tensor] : named) {
        if (!tensor.defined())
            throw std::invalid_argument("weight_decay_groups: " + name + " is an empty handle");
        if (std::find(seen.begin(), seen.end(), name) != seen.end())
            throw std::invalid_argument("weight_decay_groups: " + name + " occurs twice");
        seen.push_back(name);
        if (tensor.rank() >= 2) groups.decay.push_back(name);   // a matrix (or more): decay
        else groups.no_decay.push_back(name);                   // a bias or a gain: none
    }
    return groups;
// END EXERCISE

// BEGIN EXERCISE 15.3
    if (T < 1 || scores.size() != std::size_t(T) * std::size_t(T))
        throw std::invalid_argument("apply_causal_mask: needs T >= 1 and T·T scores, got T = " +
                                    std::to_string(T) + " and " + std::to_string(scores.size()));
    for (int i = 0; i < T; ++i)
        for (int j = i + 1; j < T; ++j)   // the keys after query i: the future
            scores[std::size_t(i) * T + j] = -INFINITY;
// END EXERCISE

// BEGIN EXERCISE 15.4
    const int d = cache.d;
    if (d < 1 || q.size() != std::size_t(d) || k.size() != std::size_t(d) ||
        v.size() != std::size_t(d))
        throw std::invalid_argument("attend_and_append: q, k and v must hold d = " +
                                    std::to_string(d) + " numbers each (d >= 1)");
    cache.keys.insert(cache.keys.end(), k.begin(), k.end());   // row t
    cache.values.insert(cache.values.end(), v.begin(), v.end());
    const std::size_t positions = cache.keys.size() / std::size_t(d);   // t + 1
    std::vector<double> p(positions);
    double largest = -INFINITY;
    for (std::size_t s = 0; s < positions; ++s) {   // p_s ∝ exp(q·k_s/√d)
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += q[std::size_t(c)] * cache.keys[s * d + c];
        p[s] = dot / std::sqrt(double(d));
        largest = std::max(largest, p[s]);
    }
    double total = 0;
    for (double& w : p) {
        w = std::exp(w - largest);   // minus the largest: no overflow
        total += w;
    }
    std::vector<double> out(std::size_t(d), 0.0);
    for (std::size_t s = 0; s < positions; ++s)
        for (int c = 0; c < d; ++c) out[std::size_t(c)] += p[s] / total * cache.values[s * d + c];
    return out;
// END EXERCISE
