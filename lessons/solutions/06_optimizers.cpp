// Reference solutions for lesson 06 (lessons/06_optimizers.cpp). Only the bodies between the
// markers are used: `make check N=06 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 06.1
    velocity = beta * velocity + grad;   // remember the past, add the present
    w -= lr * velocity;
// END EXERCISE

// BEGIN EXERCISE 06.2
    m = beta1 * m + (1 - beta1) * grad;          // running mean of g
    v = beta2 * v + (1 - beta2) * grad * grad;   // running mean of g²
    const double m_hat = m / (1 - std::pow(beta1, double(t)));   // undo the pull toward 0
    const double v_hat = v / (1 - std::pow(beta2, double(t)));
    w -= lr * m_hat / (std::sqrt(v_hat) + eps);
// END EXERCISE

// BEGIN EXERCISE 06.3
    w -= lr * weight_decay * w;                              // decay the weight itself
    adam_step(w, m, v, grad, t, lr, beta1, beta2, eps);      // then Adam on the raw gradient
// END EXERCISE
