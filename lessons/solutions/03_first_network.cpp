// Reference solutions for lesson 03 (lessons/03_first_network.cpp). Only the bodies between the
// markers are used: `make check N=03 SOLUTIONS=1` splices them into the lesson and grades them.
// These are fragments, not a C++ file, so the formatter leaves them as written.
// clang-format off

// BEGIN EXERCISE 03.1
    if (pred.size() != target.size() || pred.empty())
        throw std::invalid_argument("mse_loss: need equally many predictions and targets, > 0");
    Value sum = 0.0;
    for (std::size_t i = 0; i < pred.size(); ++i) {
        const Value error = pred[i] - target[i];
        sum += error * error;
    }
    return sum / double(pred.size());
// END EXERCISE

// BEGIN EXERCISE 03.2
    for (const Value& p : params) {
        p.data() -= lr * p.grad();   // step against the gradient
        p.grad() = 0.0;              // and clear it for the next backward()
    }
// END EXERCISE

// BEGIN EXERCISE 03.3
    if (data.x.empty()) throw std::invalid_argument("accuracy: the dataset is empty");
    int correct = 0;
    for (std::size_t i = 0; i < data.x.size(); ++i) {
        const double score = model({Value(data.x[i][0]), Value(data.x[i][1])})[0].data();
        const double predicted = score > 0 ? 1.0 : -1.0;
        if (predicted == data.y[i]) ++correct;
    }
    return double(correct) / double(data.x.size());
// END EXERCISE

// BEGIN EXERCISE 03.4
    if (scores.size() != targets.size() || scores.empty())
        throw std::invalid_argument("bce_with_logits: need equally many scores and targets, > 0");
    Value sum = 0.0;
    for (std::size_t i = 0; i < scores.size(); ++i) {
        const Value p = sigmoid(scores[i]);
        sum += targets[i] * log(p) + (1.0 - targets[i]) * log(1.0 - p);
    }
    return -sum / double(scores.size());
// END EXERCISE
