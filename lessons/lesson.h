// lesson.h: what every lesson shares. Two small tools, so each lesson file can stay about its
// topic: the homework checker behind `make check N=..`, and an SVG line plot.
#pragma once

#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <sys/stat.h>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Homework. Each lesson ends with exercises: functions between `// BEGIN EXERCISE NN.K` and
// `// END EXERCISE` that ship as `throw not_implemented("NN.K");`. The lesson's check_homework()
// calls each one through Homework::check, which prints one line per exercise:
//     pass  03.1  ...                         your function gives the expected answer
//     FAIL  03.1  expected 0.25, got 0.5      it runs, but the answer is wrong (plus a hint)
//     TODO  03.1  ...                         it still throws not_implemented (and says where)
// ---------------------------------------------------------------------------------------------

struct CheckFailed : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Fails the current exercise unless |got − expected| <= tolerance.
inline void expect_near(const char* what, double got, double expected, double tolerance) {
    if (std::fabs(got - expected) <= tolerance) return;   // (false for NaN, as it should be)
    char msg[256];
    std::snprintf(msg, sizeof msg, "%s: expected %.10g, got %.10g (tolerance %g)", what, expected,
                  got, tolerance);
    throw CheckFailed(msg);
}

inline void expect_true(const char* what, bool ok) {
    if (!ok) throw CheckFailed(std::string(what) + ": expected true, got false");
}

// True if calling `f` throws std::invalid_argument, the engine's error for bad arguments. Other
// exceptions (not_implemented among them) pass through to Homework::check.
template <class F>
bool throws_invalid_argument(F f) {
    try {
        f();
    } catch (const std::invalid_argument&) {
        return true;
    }
    return false;
}

class Homework {
public:
    explicit Homework(std::string lesson) : lesson_(std::move(lesson)) {
        std::printf("homework for lesson %s\n", lesson_.c_str());
    }

    template <class Body>
    void check(const char* id, const char* title, const char* hint, Body body) {
        try {
            body();
            ++passed_;
            std::printf("  pass  %-5s %s\n", id, title);
        } catch (const not_implemented& e) {
            ++todo_;
            std::printf("  TODO  %-5s %s\n        %s\n", id, title, e.what());
        } catch (const std::exception& e) {
            ++failed_;
            std::printf("  FAIL  %-5s %s\n        %s\n        hint: %s\n", id, title, e.what(),
                        hint);
        }
    }

    // The last line is read by tests.cpp; keep its shape.
    int finish() const {
        std::printf("homework %s: %d passed, %d failed, %d todo\n", lesson_.c_str(), passed_,
                    failed_, todo_);
        return failed_ > 0 ? 1 : 0;
    }

private:
    std::string lesson_;
    int passed_ = 0, failed_ = 0, todo_ = 0;
};

// `lesson` runs the lesson; `lesson --check` grades the homework instead. An exception that gets
// this far (a data file that does not fit, a setting out of range) ends the lesson with its
// message and exit code 1, instead of abort()'s bare "terminate called".
inline int run_lesson(int argc, char** argv, void (*lesson)(), int (*check_homework)()) {
    try {
        if (argc > 1 && std::strcmp(argv[1], "--check") == 0) return check_homework();
        lesson();
        return 0;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "%s: error: %s\n", argv[0], e.what());
        return 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Plots: a minimal SVG line chart, enough to see a loss curve or an error-versus-h slope.
// Axes may be logarithmic (base 10); points that cannot be drawn (≤ 0 on a log axis, NaN, inf)
// are skipped. Files go to build/plots/, which `make clean` removes.
// ---------------------------------------------------------------------------------------------

struct Series {
    std::string label;
    std::vector<double> x, y;
};

enum class Scale { linear, log_x, log_y, log_log };

struct Plot {
    std::string title, x_label, y_label;
    bool log_x = false, log_y = false;
    std::vector<Series> series;

    Plot(std::string title_, std::string x_label_, std::string y_label_,
         Scale scale = Scale::linear)
        : title(std::move(title_)), x_label(std::move(x_label_)), y_label(std::move(y_label_)),
          log_x(scale == Scale::log_x || scale == Scale::log_log),
          log_y(scale == Scale::log_y || scale == Scale::log_log) {}

    void add(std::string label, std::vector<double> x, std::vector<double> y) {
        series.push_back({std::move(label), std::move(x), std::move(y)});
    }
    // A curve over steps: y[k] is drawn at x = k.
    void add(std::string label, std::vector<double> y) {
        std::vector<double> steps(y.size());
        for (std::size_t k = 0; k < y.size(); ++k) steps[k] = double(k);
        add(std::move(label), std::move(steps), std::move(y));
    }

    // Writes build/plots/<name>.svg and returns its path.
    std::string save(const std::string& name) const {
        ::mkdir("build", 0755);
        ::mkdir("build/plots", 0755);
        const std::string path = "build/plots/" + name + ".svg";
        std::ofstream f(path);
        if (!f) throw std::runtime_error("Plot::save: cannot write " + path);
        f << svg();
        std::printf("  (plot written to %s)\n", path.c_str());
        return path;
    }

    std::string svg() const {
        const double W = 640, H = 410, left = 70, right = 170, top = 52, bottom = 50;
        double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
        for (const Series& s : series)
            for (std::size_t i = 0; i < s.x.size(); ++i) {
                double px, py;
                if (!project(s.x[i], s.y[i], px, py)) continue;
                x0 = std::min(x0, px), x1 = std::max(x1, px);
                y0 = std::min(y0, py), y1 = std::max(y1, py);
            }
        if (!(x0 < x1)) x0 -= 1, x1 += 1;
        if (!(y0 < y1)) y0 -= 1, y1 += 1;
        auto sx = [&](double v) { return left + (v - x0) / (x1 - x0) * (W - left - right); };
        auto sy = [&](double v) { return H - bottom - (v - y0) / (y1 - y0) * (H - top - bottom); };

        std::string out;
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "<svg xmlns='http://www.w3.org/2000/svg' width='%g' height='%g' "
                      "font-family='sans-serif' font-size='12'>\n<rect width='100%%' "
                      "height='100%%' fill='white'/>\n", W, H);
        out += buf;
        std::snprintf(buf, sizeof buf,
                      "<rect x='%g' y='%g' width='%g' height='%g' fill='none' stroke='black'/>\n",
                      left, top, W - left - right, H - top - bottom);
        out += buf;
        out += text(W / 2 - right / 2, 22, title, "middle", 15);
        out += text(W / 2 - right / 2, H - 10, x_label + (log_x ? " (log scale)" : ""), "middle");
        out += text(14, top - 10, y_label + (log_y ? " (log scale)" : ""), "start");
        for (int k = 0; k <= 4; ++k) {   // five ticks per axis, labelled in data units
            const double fx = x0 + (x1 - x0) * k / 4, fy = y0 + (y1 - y0) * k / 4;
            out += text(sx(fx), H - bottom + 16, number(fx, log_x), "middle");
            out += text(left - 6, sy(fy) + 4, number(fy, log_y), "end");
        }
        const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
        for (std::size_t k = 0; k < series.size(); ++k) {
            const Series& s = series[k];
            const char* color = colors[k % 6];
            std::string points;
            for (std::size_t i = 0; i < s.x.size(); ++i) {
                double px, py;
                if (!project(s.x[i], s.y[i], px, py)) continue;
                std::snprintf(buf, sizeof buf, "%.1f,%.1f ", sx(px), sy(py));
                points += buf;
            }
            std::snprintf(buf, sizeof buf,
                          "<polyline fill='none' stroke='%s' stroke-width='2' points='", color);
            out += buf + points + "'/>\n";
            const double ly = top + 14 + 18.0 * k;
            std::snprintf(buf, sizeof buf,
                          "<line x1='%g' y1='%g' x2='%g' y2='%g' stroke='%s' stroke-width='2'/>\n",
                          W - right + 10, ly - 4, W - right + 30, ly - 4, color);
            out += buf;
            out += text(W - right + 36, ly, s.label, "start");
        }
        return out + "</svg>\n";
    }

private:
    bool project(double x, double y, double& px, double& py) const {
        if (log_x && !(x > 0)) return false;
        if (log_y && !(y > 0)) return false;
        px = log_x ? std::log10(x) : x;
        py = log_y ? std::log10(y) : y;
        return std::isfinite(px) && std::isfinite(py);
    }
    static std::string number(double v, bool is_log) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.3g", is_log ? std::pow(10.0, v) : v);
        return buf;
    }
    static std::string text(double x, double y, const std::string& s, const char* anchor,
                            int size = 12) {
        char buf[128];
        std::snprintf(buf, sizeof buf, "<text x='%.1f' y='%.1f' text-anchor='%s' font-size='%d'>",
                      x, y, anchor, size);
        std::string escaped;
        for (char c : s) escaped += c == '<' ? "&lt;" : c == '&' ? "&amp;" : std::string(1, c);
        return buf + escaped + "</text>\n";
    }
};

// A histogram as a line series, for Plot: the fraction of `values` that falls in each of `bins`
// equal-width bins on [lo, hi], drawn at the bin centres. Values outside [lo, hi] are counted in
// the nearest end bin, so the fractions of the finite values add up to 1; NaN and ±inf are
// skipped. Use it as  plot.series.push_back(histogram("tanh, layer 5", values, 40, -1, 1));
inline Series histogram(std::string label, const std::vector<double>& values, int bins, double lo,
                        double hi) {
    Series s{std::move(label), std::vector<double>(bins), std::vector<double>(bins, 0.0)};
    const double width = (hi - lo) / bins;
    for (int k = 0; k < bins; ++k) s.x[k] = lo + (k + 0.5) * width;
    std::size_t finite = 0;
    for (double v : values) finite += std::isfinite(v) ? 1 : 0;
    for (double v : values) {
        if (!std::isfinite(v)) continue;
        const double k = std::floor((v - lo) / width);   // clamped as a double: no int overflow
        s.y[std::size_t(std::min(std::max(k, 0.0), bins - 1.0))] += 1.0 / double(finite);
    }
    return s;
}
