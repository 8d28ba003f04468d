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
