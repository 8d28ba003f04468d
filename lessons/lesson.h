// lesson.h: what every lesson shares, so each lesson file can stay about its topic: the homework
// checker behind `make check N=..`, a few small helpers (headings, differences, timing, device
// memory), an SVG line plot and an SVG heat map.
#pragma once

#include "../engine.h"   // relative to this file, so tests.cpp can include it too (group "plots")

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
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

// The same, for a lesson with flags: parse_options returns −1 to go on, or the exit status (a
// bad flag, --help). `--check` skips it: the grader passes no flags.
inline int run_lesson(int argc, char** argv, int (*parse_options)(int, char**), void (*lesson)(),
                      int (*check_homework)()) {
    if (argc < 2 || std::strcmp(argv[1], "--check") != 0) {
        const int status = parse_options(argc, argv);
        if (status >= 0) return status;
    }
    return run_lesson(argc, argv, lesson, check_homework);
}

// ---------------------------------------------------------------------------------------------
// Small helpers that several lessons (and tests.cpp) use: one copy here instead of one per file.
// ---------------------------------------------------------------------------------------------

// A section title, printed the same way by every lesson so its output reads as one document.
inline void heading(const char* title) { std::printf("\n== %s\n\n", title); }

// False, after saying what to do, when the text `make data` brings (lessons 15 and 16) is not
// there: the lesson then ends quietly, so that `make lessons` passes on a machine without it.
inline bool have_text(const char* path) {
    if (std::ifstream(path)) return true;
    std::printf("\nNo %s here: this lesson needs the text. Run `make data` first\n"
                "(from the repository root, where the lesson looks for data/).\n",
                path);
    return false;
}

// max |a[i] − b[i]|: how far two computations of the same numbers (fused and composed, say)
// disagree. Vectors of different sizes cannot agree: infinity.
inline double max_difference(const std::vector<real>& a, const std::vector<real>& b) {
    if (a.size() != b.size()) return INFINITY;
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    return worst;
}

// Timing on a shared machine. One run of a few milliseconds can take twice as long when another
// program takes the core, and two threads are worse: one waits at a barrier for the other. So
// the lessons time on one thread, several times, the versions taking turns so that both meet
// the same disturbances, and report the median, which a few slow runs do not move.
using Clock = std::chrono::steady_clock;   // steady: it never jumps, as the wall clock can

// Seconds from `start` until now.
inline double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// The middle value of v (the upper middle for an even size): a few slow runs do not move it.
inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// The median milliseconds of each function over `runs` rounds, on one thread, the functions
// taking turns within each round.
inline std::vector<double> median_ms_one_thread(const std::vector<std::function<void()>>& functions,
                                                int runs) {
    const int threads = num_threads();
    set_num_threads(1);
    std::vector<std::vector<double>> ms(functions.size());
    for (int r = 0; r < runs; ++r)
        for (std::size_t i = 0; i < functions.size(); ++i) {
            const Clock::time_point start = Clock::now();
            functions[i]();
            ms[i].push_back(1e3 * seconds_since(start));
        }
    set_num_threads(threads);
    std::vector<double> medians;
    for (const std::vector<double>& m : ms) medians.push_back(median(m));
    return medians;
}

// Device memory for the kernels of kernels.cu (lesson 14, tests.cpp): engine.h's DeviceBuffer<T>
// holds T[n] on the device and frees it at the end of its scope; these copy a host vector into
// one and back. (cuda_emu.h fills fresh device memory with 0xFF bytes, a NaN as float, so a value
// that no kernel wrote shows up.)

// Copies `host` into the start of an existing buffer, which may be longer.
template <class T>
void copy_to_device(DeviceBuffer<T>& device, const std::vector<T>& host) {
    if (host.size() > device.size())
        throw std::invalid_argument("copy_to_device: the host vector is larger");
    cuda_copy_to_device(device.data(), host.data(), host.size() * sizeof(T));
}
// A new buffer holding a copy of `host`: a kernel's input.
template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& host) {
    DeviceBuffer<T> device(host.size());
    copy_to_device(device, host);
    return device;
}
// The buffer's values, copied back: a kernel's output, to check on the CPU.
template <class T>
std::vector<T> to_host(const DeviceBuffer<T>& device) {
    std::vector<T> host(device.size());
    cuda_copy_to_host(host.data(), device.data(), device.bytes());
    return host;
}

// ---------------------------------------------------------------------------------------------
// ZeRO's memory per device (lesson 13 §5 derives it, lesson 16 measures stage 1). Training with
// Adam in mixed precision keeps, per parameter: a 16-bit weight (2 bytes) and gradient (2), and
// the optimizer state, 12 bytes in fp32: the master weight, m and v (ZeRO's K = 12). In plain
// fp32 it is weight 4 + gradient 4 + m 4 + v 4. Plain data parallelism keeps all of it on every
// one of N devices. ZeRO (Rajbhandari et al., 2020) and FSDP shard it, one piece per device, each
// updating its own piece (the gradients reduce-scattered, the weights all-gathered when needed):
// stage 1 shards the optimizer state, stage 2 also the gradient, stage 3 (FSDP's full sharding)
// also the weights. For Ψ parameters, bytes per device:
//     stage 0: 16Ψ     stage 1: 4Ψ + 12Ψ/N     stage 2: 2Ψ + 14Ψ/N     stage 3: 16Ψ/N
// Not counted: activations, and the buffers into which stage 3 gathers a layer's weights.
// ---------------------------------------------------------------------------------------------
namespace adam_bytes {
const int fp32 = 4, fp16 = 2;
const int fp32_training = fp32 + fp32 + fp32 + fp32;     // weight, gradient, m, v
const int weight = fp16, gradient = fp16;                // mixed precision's 16-bit copies
const int optimizer_state = fp32 + fp32 + fp32;          // fp32 master weight, m, v: ZeRO's K = 12
const int mixed = weight + gradient + optimizer_state;   // 16
}   // namespace adam_bytes

// Bytes per parameter that a stage (0 to 3) splits over the devices: state, then gradient, weight.
inline int sharded_bytes(int stage) {
    const int sharded_in_order[] = {adam_bytes::optimizer_state, adam_bytes::gradient,
                                    adam_bytes::weight};
    int bytes = 0;
    for (int s = 0; s < stage; ++s) bytes += sharded_in_order[s];
    return bytes;
}

inline double bytes_per_device(double params, int stage, int devices) {
    const int sharded = sharded_bytes(stage), replicated = adam_bytes::mixed - sharded;
    return params * replicated + params * sharded / devices;
}

// "4P + 12P/N": a stage's bytes per device for P parameters on N devices.
inline std::string stage_formula(int stage) {
    const int sharded = sharded_bytes(stage), replicated = adam_bytes::mixed - sharded;
    char buf[48];
    if (sharded == 0) std::snprintf(buf, sizeof buf, "%dP", replicated);
    else if (replicated == 0) std::snprintf(buf, sizeof buf, "%dP/N", sharded);
    else std::snprintf(buf, sizeof buf, "%dP + %dP/N", replicated, sharded);
    return buf;
}

// ---------------------------------------------------------------------------------------------
// Plots: a minimal SVG line chart, enough to see a loss curve or an error-versus-h slope.
// Axes may be logarithmic (base 10); points that cannot be drawn (≤ 0 on a log axis, NaN, inf)
// are skipped. Files go to build/plots/, which `make clean` removes.
//
// Ticks are numbers a reader can use: on a linear axis they step by 1, 2 or 5 times a power of
// ten (…, 0.1, 0.2, 0.5, 1, 2, 5, …) and the axis ends on a tick; on a log axis they are powers
// of ten (1-2-5 values inside a decade when the axis spans less than three decades). An axis
// whose data are all whole numbers (steps, layers) gets whole-number ticks only.
// `equal_axes = true` gives x and y the same length per unit, for paths whose shape matters.
// ---------------------------------------------------------------------------------------------

struct Series {
    std::string label;
    std::vector<double> x, y;
};

enum class Scale { linear, log_x, log_y, log_log };

// One axis as drawn: its ends and its ticks, in drawn units (log10 of the value on a log axis),
// and the label written at each tick.
struct Axis {
    double lo = 0, hi = 1;
    std::vector<double> ticks;
    std::vector<std::string> labels;
};

// The step between linear ticks: 1, 2 or 5 times a power of ten, so that `span` holds about five
// steps. Whole-number data never get a step below 1.
inline double nice_step(double span, bool whole_numbers) {
    const double raw = span / 5;
    const double decade = std::pow(10.0, std::floor(std::log10(raw)));
    const double r = raw / decade;   // in [1, 10)
    double step = 10 * decade;
    if (r < 1.5) step = decade;
    else if (r < 3.5) step = 2 * decade;
    else if (r < 7.5) step = 5 * decade;
    if (whole_numbers && step < 1) step = 1;
    return step;
}

// A tick's label, rounded to `resolution` (the tick step, or the tick itself on a log axis):
// plain decimals from 0.001 to 99999, otherwise mantissa and exponent ("2.5e-4"), trailing
// zeros dropped.
inline std::string tick_text(double v, double resolution) {
    const double a = std::fabs(v);
    if (a < resolution * 1e-6) return "0";
    const int res_exp = int(std::floor(std::log10(resolution) + 1e-9));
    char buf[48];
    int exponent = 0;
    if (a >= 1e-3 && a < 1e5) {
        std::snprintf(buf, sizeof buf, "%.*f", std::max(0, -res_exp), v);
    } else {
        exponent = int(std::floor(std::log10(a) + 1e-9));
        std::snprintf(buf, sizeof buf, "%.*f", std::max(0, exponent - res_exp),
                      v / std::pow(10.0, exponent));
    }
    std::string s = buf;
    if (s.find('.') != std::string::npos) {   // 0.50 → 0.5, 2.0 → 2
        while (s.back() == '0') s.pop_back();
        if (s.back() == '.') s.pop_back();
    }
    if (exponent != 0) s += "e" + std::to_string(exponent);
    return s;
}

// Linear ticks k·step for every whole k with lo ≤ k·step ≤ hi (k·step, not a running sum, so
// rounding does not accumulate).
inline void add_linear_ticks(Axis& axis, double step) {
    const double eps = step * 1e-9;
    for (double k = std::ceil((axis.lo - eps) / step); k * step <= axis.hi + eps; k += 1) {
        axis.ticks.push_back(k * step);
        axis.labels.push_back(tick_text(k * step, step));
    }
}

// Log ticks m·10^d for each mantissa m in `mantissas`, inside [lo, hi] (log10 units), keeping
// only decades d that are multiples of `stride`.
inline void add_log_ticks(Axis& axis, const std::vector<int>& mantissas, int stride) {
    for (double d = std::floor(axis.lo); d <= std::ceil(axis.hi); d += 1) {
        if (std::fmod(std::fabs(d), double(stride)) != 0) continue;
        for (int m : mantissas) {
            const double t = d + std::log10(double(m));
            if (t < axis.lo - 1e-9 || t > axis.hi + 1e-9) continue;
            axis.ticks.push_back(t);
            axis.labels.push_back(tick_text(m * std::pow(10.0, d), std::pow(10.0, d)));
        }
    }
}

// The axis for data spanning [lo, hi] (drawn units). A linear axis grows to the nearest ticks.
inline Axis make_axis(double lo, double hi, bool log, bool whole_numbers) {
    if (!(lo <= hi)) {   // no data at all: any range will do
        lo = 0;
        hi = 1;
    }
    if (lo == hi) {   // one value: a range around it
        lo -= 1;
        hi += 1;
    }
    Axis axis;
    axis.lo = lo;
    axis.hi = hi;
    if (!log) {
        const double step = nice_step(hi - lo, whole_numbers);
        axis.lo = std::floor(lo / step + 1e-9) * step;
        axis.hi = std::ceil(hi / step - 1e-9) * step;
        add_linear_ticks(axis, step);
        return axis;
    }
    const int decades = int(std::floor(hi + 1e-9) - std::ceil(lo - 1e-9)) + 1;
    if (decades >= 3) {   // powers of ten, every 1st, 2nd, 5th, 10th, ... so at most 7 labels
        int stride = 1;
        for (int s : {2, 5, 10, 20, 50, 100, 200, 500})
            if (decades / stride > 7) stride = s;
        add_log_ticks(axis, {1}, stride);
        return axis;
    }
    add_log_ticks(axis, {1, 2, 5}, 1);
    if (axis.ticks.size() >= 2) return axis;
    axis = Axis{lo, hi, {}, {}};
    add_log_ticks(axis, {1, 2, 3, 4, 5, 6, 7, 8, 9}, 1);
    if (axis.ticks.size() >= 2) return axis;
    // Less than a factor of 2 from end to end: linear ticks on the values, drawn at their logs.
    Axis values = make_axis(std::pow(10.0, lo), std::pow(10.0, hi), false, whole_numbers);
    axis = Axis{lo, hi, {}, {}};
    for (std::size_t i = 0; i < values.ticks.size(); ++i) {
        if (!(values.ticks[i] > 0)) continue;
        const double t = std::log10(values.ticks[i]);
        if (t < lo - 1e-9 || t > hi + 1e-9) continue;
        axis.ticks.push_back(t);
        axis.labels.push_back(values.labels[i]);
    }
    return axis;
}

// Widens `axis` (linear) about its centre to `span`, with ticks at a step fit for the new span.
inline void widen_axis(Axis& axis, double span, bool whole_numbers) {
    const double centre = (axis.lo + axis.hi) / 2;
    axis = Axis{centre - span / 2, centre + span / 2, {}, {}};
    add_linear_ticks(axis, nice_step(span, whole_numbers));
}

// Writes an SVG drawing to build/plots/<name>.svg, says so, and returns the path.
inline std::string save_svg(const std::string& name, const std::string& svg, const char* what) {
    ::mkdir("build", 0755);
    ::mkdir("build/plots", 0755);
    const std::string path = "build/plots/" + name + ".svg";
    std::ofstream f(path);
    if (!f) throw std::runtime_error(std::string(what) + ": cannot write " + path);
    f << svg;
    std::printf("  (%s written to %s)\n", what, path.c_str());
    return path;
}

struct Plot {
    std::string title, x_label, y_label;
    bool log_x = false, log_y = false;
    bool equal_axes = false;   // same length per unit on x and y (linear axes only)
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
    std::string save(const std::string& name) const { return save_svg(name, svg(), "plot"); }

    // The two axes as they will be drawn (tests read their ticks).
    void axes(Axis& x_axis, Axis& y_axis) const {
        double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
        bool x_whole = true, y_whole = true;
        for (const Series& s : series)
            for (std::size_t i = 0; i < s.x.size(); ++i) {
                double px, py;
                if (!project(s.x[i], s.y[i], px, py)) continue;
                x0 = std::min(x0, px);
                x1 = std::max(x1, px);
                y0 = std::min(y0, py);
                y1 = std::max(y1, py);
                if (s.x[i] != std::floor(s.x[i])) x_whole = false;
                if (s.y[i] != std::floor(s.y[i])) y_whole = false;
            }
        x_axis = make_axis(x0, x1, log_x, x_whole);
        y_axis = make_axis(y0, y1, log_y, y_whole);
        if (!equal_axes || log_x || log_y) return;
        // Units per pixel must match: widen whichever axis has fewer of them.
        const double per_px_x = (x_axis.hi - x_axis.lo) / plot_w,
                     per_px_y = (y_axis.hi - y_axis.lo) / plot_h;
        if (per_px_x > per_px_y) widen_axis(y_axis, per_px_x * plot_h, y_whole);
        else widen_axis(x_axis, per_px_y * plot_w, x_whole);
    }

    std::string svg() const {
        Axis xa, ya;
        axes(xa, ya);
        auto sx = [&](double v) { return left + (v - xa.lo) / (xa.hi - xa.lo) * plot_w; };
        auto sy = [&](double v) { return top + plot_h - (v - ya.lo) / (ya.hi - ya.lo) * plot_h; };

        std::string out;
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "<svg xmlns='http://www.w3.org/2000/svg' width='%g' height='%g' "
                      "font-family='sans-serif' font-size='12'>\n<rect width='100%%' "
                      "height='100%%' fill='white'/>\n",
                      width, height);
        out += buf;
        for (std::size_t k = 0; k < xa.ticks.size(); ++k) {   // grid line and label per tick
            const double px = sx(xa.ticks[k]);
            std::snprintf(buf, sizeof buf,
                          "<line x1='%.1f' y1='%g' x2='%.1f' y2='%g' stroke='#ddd'/>\n", px, top,
                          px, top + plot_h);
            out += buf;
            out += text(px, top + plot_h + 16, xa.labels[k], "middle");
        }
        for (std::size_t k = 0; k < ya.ticks.size(); ++k) {
            const double py = sy(ya.ticks[k]);
            std::snprintf(buf, sizeof buf,
                          "<line x1='%g' y1='%.1f' x2='%g' y2='%.1f' stroke='#ddd'/>\n", left, py,
                          left + plot_w, py);
            out += buf;
            out += text(left - 6, py + 4, ya.labels[k], "end");
        }
        std::snprintf(buf, sizeof buf,
                      "<rect x='%g' y='%g' width='%g' height='%g' fill='none' stroke='black'/>\n",
                      left, top, plot_w, plot_h);
        out += buf;
        out += text(left + plot_w / 2, 22, title, "middle", 15);
        out +=
            text(left + plot_w / 2, height - 10, x_label + (log_x ? " (log scale)" : ""), "middle");
        out += text(14, top - 10, y_label + (log_y ? " (log scale)" : ""), "start");
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
            const double lx = left + plot_w;
            std::snprintf(buf, sizeof buf,
                          "<line x1='%g' y1='%g' x2='%g' y2='%g' stroke='%s' stroke-width='2'/>\n",
                          lx + 10, ly - 4, lx + 30, ly - 4, color);
            out += buf;
            out += text(lx + 36, ly, s.label, "start");
        }
        return out + "</svg>\n";
    }

private:
    // The picture: 640 × 410 pixels; the plot area inside the margins, the legend at the right.
    static constexpr double width = 640, height = 410, left = 70, right = 170, top = 52,
                            bottom = 50;
    static constexpr double plot_w = width - left - right, plot_h = height - top - bottom;

    bool project(double x, double y, double& px, double& py) const {
        if (log_x && !(x > 0)) return false;
        if (log_y && !(y > 0)) return false;
        px = log_x ? std::log10(x) : x;
        py = log_y ? std::log10(y) : y;
        return std::isfinite(px) && std::isfinite(py);
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

// ---------------------------------------------------------------------------------------------
// Heat maps: a matrix as a grid of squares, white at 0 and darkest at the largest value, with a
// label on every row and column (lesson 15 draws attention weights: rows are queries, columns
// keys). A NaN cell, a value that does not exist (a masked weight), is drawn light grey.
// ---------------------------------------------------------------------------------------------

// Text for an SVG element: &, < and > written as entities.
inline std::string xml_escaped(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '&') out += "&amp;";
        else if (c == '<') out += "&lt;";
        else if (c == '>') out += "&gt;";
        else out += c;
    }
    return out;
}

struct HeatMap {
    std::string title, row_axis, col_axis;
    int rows = 0, cols = 0;
    std::vector<double> values;                        // [rows, cols], row-major
    std::vector<std::string> row_labels, col_labels;   // rows and cols of them (or none)

    // The largest finite value: the darkest colour (1 when there is none above 0).
    double largest() const {
        double top = 0;
        for (double v : values)
            if (std::isfinite(v)) top = std::max(top, v);
        return top > 0 ? top : 1;
    }

    // White (255) for 0 to dark blue (8, 48, 107) for the largest value, linear in between.
    static std::string colour(double fraction) {
        const double f = std::min(std::max(fraction, 0.0), 1.0);
        char rgb[32];
        std::snprintf(rgb, sizeof rgb, "rgb(%d,%d,%d)", int(255 - f * (255 - 8)),
                      int(255 - f * (255 - 48)), int(255 - f * (255 - 107)));
        return rgb;
    }

    std::string svg() const {
        if (rows <= 0 || cols <= 0 || values.size() != std::size_t(rows) * cols)
            throw std::invalid_argument("HeatMap: values must hold rows·cols numbers");
        const double cell = std::max(4.0, std::min(16.0, 640.0 / std::max(rows, cols)));
        const double left = 110, top = 130, width = left + cell * cols + 120,
                     height = top + cell * rows + 40;
        const double top_value = largest();
        std::string out;
        char buf[320];
        std::snprintf(buf, sizeof buf,
                      "<svg xmlns='http://www.w3.org/2000/svg' width='%g' height='%g' "
                      "font-family='monospace' font-size='%d'>\n<rect width='100%%' "
                      "height='100%%' fill='white'/>\n",
                      width, height, int(cell - 3) > 6 ? int(cell - 3) : 6);
        out += buf;
        std::snprintf(buf, sizeof buf,
                      "<text x='%g' y='22' font-family='sans-serif' font-size='15'>%s</text>\n",
                      left, xml_escaped(title).c_str());
        out += buf;
        std::snprintf(buf, sizeof buf,
                      "<text x='%g' y='44' font-family='sans-serif' font-size='12'>columns: "
                      "%s; rows: %s</text>\n",
                      left, xml_escaped(col_axis).c_str(), xml_escaped(row_axis).c_str());
        out += buf;
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < cols; ++c) {
                const double v = values[std::size_t(r) * cols + c];
                const std::string fill = std::isnan(v) ? "#e8e8e8" : colour(v / top_value);
                std::snprintf(buf, sizeof buf,
                              "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='%s'/>\n",
                              left + c * cell, top + r * cell, cell, cell, fill.c_str());
                out += buf;
            }
        for (std::size_t r = 0; r < row_labels.size() && int(r) < rows; ++r) {
            std::snprintf(buf, sizeof buf, "<text x='%g' y='%.1f' text-anchor='end'>%s</text>\n",
                          left - 4, top + (double(r) + 0.8) * cell,
                          xml_escaped(row_labels[r]).c_str());
            out += buf;
        }
        for (std::size_t c = 0; c < col_labels.size() && int(c) < cols; ++c) {   // written upward
            const double x = left + (double(c) + 0.8) * cell, y = top - 4;
            std::snprintf(buf, sizeof buf,
                          "<text x='%.1f' y='%g' transform='rotate(-90 %.1f %g)'>%s</text>\n", x, y,
                          x, y, xml_escaped(col_labels[c]).c_str());
            out += buf;
        }
        // The scale: ten steps from 0 to the largest value.
        const double bar_x = left + cell * cols + 30;
        for (int k = 0; k < 10; ++k) {
            std::snprintf(buf, sizeof buf,
                          "<rect x='%g' y='%g' width='16' height='14' fill='%s'/>\n", bar_x,
                          top + 14.0 * (9 - k), colour((k + 0.5) / 10).c_str());
            out += buf;
        }
        std::snprintf(buf, sizeof buf,
                      "<text x='%g' y='%g' font-family='sans-serif' font-size='11'>%.3g</text>\n"
                      "<text x='%g' y='%g' font-family='sans-serif' font-size='11'>0</text>\n",
                      bar_x + 20, top + 11, top_value, bar_x + 20, top + 14 * 9 + 11);
        out += buf;
        return out + "</svg>\n";
    }

    // Writes build/plots/<name>.svg and returns its path.
    std::string save(const std::string& name) const { return save_svg(name, svg(), "heat map"); }
};
