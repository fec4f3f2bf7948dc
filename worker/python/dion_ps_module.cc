// dion_ps._dion_ps: the Python binding of the client library (worker/client/client.h). The
// PyTorch-shaped API is Python (worker/python/dion_ps/optimizer.py); this module only moves
// buffers and statuses across: float32 numpy arrays are read and written in place through Eigen
// views (no copy besides the client's own), every call that may wait runs without the GIL, and
// a non-OK absl::Status becomes the exception dion_ps.errors.from_status makes of its code and
// message. Waits are sliced so that Ctrl-C (a pending Python signal) interrupts them.
//
// Thread-safety: a _Client may be used from several Python threads, as the C++ Client may
// (submit and flush from one training thread; copies, versions and stats from any).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/contribution.h"
#include "common/matrix.h"
#include "common/model_table.h"
#include "common/mutex.h"
#include "common/param_spec.h"
#include "common/training_defaults.h"
#include "worker/client/client.h"
#include "worker/python/data_binding.h"
#include "worker/python/raise_status.h"
#include "worker/train/mlp.h"
#include "worker/train/progress_line.h"

namespace py = pybind11;

namespace dion {
namespace {

// How long a wait runs without the GIL before it checks for a pending signal (Ctrl-C).
constexpr absl::Duration kSignalSlice = absl::Milliseconds(100);

// Raises the Python exception of `status` (dion_ps.errors.from_status). REQUIRES: the GIL.
[[noreturn]] void Raise(const absl::Status& status) { RaiseStatus(status); }

void Check(const absl::Status& status) {
  if (!status.ok()) Raise(status);
}

// Raises KeyboardInterrupt (or what a signal handler raised) when a signal is pending.
void CheckSignals() {
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

double Number(const py::dict& d, const char* key, double fallback) {
  return d.contains(key) ? d[key].cast<double>() : fallback;
}

// A float32, C-contiguous numpy array of `rows` x `cols` elements, or ValueError naming `what`.
void CheckBuffer(const py::array& a, int64_t rows, int64_t cols, const std::string& what,
                 bool writable) {
  if (!a.dtype().is(py::dtype::of<float>())) {
    throw py::value_error(absl::StrCat(what, ": expected a float32 array, got dtype ",
                                       std::string(py::str(a.dtype()))));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(absl::StrCat(what, ": expected a C-contiguous array"));
  }
  if (writable && !a.writeable()) {
    throw py::value_error(absl::StrCat(what, ": the array is read-only"));
  }
  if (a.size() != rows * cols) {
    throw py::value_error(absl::StrCat(what, ": expected ", rows, " x ", cols, " = ",
                                       rows * cols, " elements, got ", a.size()));
  }
}

// One parameter of the table from a dict the Python layer builds (dion_ps/optimizer.py):
// name, shape, optimizer, hyper-parameters, split_owners, and the exact initial value.
ParameterDefinition Definition(const py::dict& d) {
  ParameterDefinition def;
  ParamSpec& spec = def.spec;
  spec.name = d["name"].cast<std::string>();
  spec.shape = d["shape"].cast<std::vector<int64_t>>();
  absl::StatusOr<OptimizerKind> kind = ParseOptimizerKind(d["optimizer"].cast<std::string>());
  Check(kind.status());
  spec.optimizer = *kind;
  const double lr = Number(d, "lr", 0.01), wd = Number(d, "weight_decay", 0.0);
  spec.dion.lr = lr;
  spec.dion.weight_decay = wd;
  spec.dion.mu = Number(d, "mu", spec.dion.mu);
  spec.dion.rank_fraction = Number(d, "rank_fraction", spec.dion.rank_fraction);
  spec.adamw.lr = lr;
  spec.adamw.weight_decay = wd;
  spec.adamw.beta1 = Number(d, "beta1", spec.adamw.beta1);
  spec.adamw.beta2 = Number(d, "beta2", spec.adamw.beta2);
  spec.adamw.eps = Number(d, "eps", spec.adamw.eps);
  spec.lion.lr = lr;
  spec.lion.weight_decay = wd;
  spec.lion.beta1 = Number(d, "beta1", spec.lion.beta1);
  spec.lion.beta2 = Number(d, "beta2", spec.lion.beta2);
  if (d.contains("split_owners")) spec.split_owners = d["split_owners"].cast<int>();
  if (d.contains("initial_value")) {
    py::array a = d["initial_value"].cast<py::array>();
    CheckBuffer(a, spec.rows(), spec.cols(), "initial value of '" + spec.name + "'", false);
    def.initial_value =
        Eigen::Map<const Matrix>(static_cast<const float*>(a.data()), spec.rows(), spec.cols());
  }
  return def;
}

ClientOptions Options(const py::dict& d) {
  ClientOptions o;
  o.shard_addresses = d["shards"].cast<std::vector<std::string>>();
  o.worker_id = d["worker_id"].cast<std::string>();
  o.compression_rank_fraction = Number(d, "compression_rank_fraction", 0.25);
  o.max_in_flight = static_cast<int>(Number(d, "max_in_flight", o.max_in_flight));
  o.rpc_deadline = absl::Seconds(Number(d, "rpc_deadline", 10));
  o.reconnect.give_up_after = absl::Seconds(Number(d, "give_up_after", 60));
  o.track_last_step = Number(d, "lookahead", 0) > 0;
  o.dp_clip = Number(d, "dp_clip", 0);
  o.seed = static_cast<uint64_t>(Number(d, "seed", 1));
  const auto text = [&](const char* key) {
    return d.contains(key) && !d[key].is_none() ? d[key].cast<std::string>() : std::string();
  };
  o.tls.ca_file = text("tls_ca_file");
  o.tls.cert_file = text("tls_cert_file");
  o.tls.key_file = text("tls_key_file");
  o.tls.server_name = text("tls_server_name");
  o.tls.token_file = text("token_file");
  return o;
}

// What the shards settled of each parameter (applied or dropped as stale), in double, in the
// accumulators' sum units: the observer of ClientOptions::on_acknowledged, for tests that check
// that nothing is lost. Thread-safe.
class AckLedger {
 public:
  explicit AckLedger(const ModelTable& table) {
    for (const ParameterDefinition& p : table.parameters) {
      index_.push_back(p.spec.name);
      settled_.push_back(MatrixD::Zero(p.spec.rows(), p.spec.cols()));
    }
  }
  void Record(const Contribution& c, PushFate fate) {
    MutexLock lock(&mu_);
    if (fate == PushFate::kRestored) {
      ++restored_;
      return;
    }
    const auto it = std::find(index_.begin(), index_.end(), c.parameter);
    if (it == index_.end()) return;
    const double s = static_cast<double>(c.sample_count);
    MatrixD& sum = settled_[it - index_.begin()];
    if (c.is_low_rank()) {
      sum += c.factors().P.cast<double>() * c.factors().R.cast<double>().transpose() * s;
    } else {
      sum += c.gradient().cast<double>() * s;
    }
  }
  MatrixD Settled(int i) const {
    MutexLock lock(&mu_);
    return settled_.at(i);
  }
  int64_t restored() const {
    MutexLock lock(&mu_);
    return restored_;
  }

 private:
  std::vector<std::string> index_;
  mutable Mutex mu_;
  std::vector<MatrixD> settled_ ABSL_GUARDED_BY(mu_);
  int64_t restored_ ABSL_GUARDED_BY(mu_) = 0;
};

py::array_t<double> ToNumpy(const MatrixD& m) {
  py::array_t<double> out({m.rows(), m.cols()});
  Eigen::Map<MatrixD>(out.mutable_data(), m.rows(), m.cols()) = m;
  return out;
}

class PyClient {
 public:
  PyClient(const std::string& model_name, const py::list& parameters, const py::dict& options) {
    auto table = std::make_shared<ModelTable>();
    table->model_name = model_name;
    for (const py::handle& p : parameters) {
      table->parameters.push_back(Definition(p.cast<py::dict>()));
    }
    ClientOptions client_options = Options(options);
    if (options.contains("record_acknowledged") && options["record_acknowledged"].cast<bool>()) {
      ledger_ = std::make_shared<AckLedger>(*table);
      client_options.on_acknowledged = [ledger = ledger_](const Contribution& c, PushFate f) {
        ledger->Record(c, f);
      };
    }
    Connect(std::move(table), std::move(client_options));
  }

  py::list Specs() const {
    py::list out;
    for (const ParamSpec& s : client_->specs()) {
      out.append(py::make_tuple(s.name, s.rows(), s.cols(),
                                std::string(OptimizerKindName(s.optimizer))));
    }
    return out;
  }

  // Returns the seconds Client::Submit itself took (bench/python_step_overhead.py compares).
  double Submit(const py::list& gradients, int64_t samples, double loss) {
    const std::vector<ParamSpec>& specs = client_->specs();
    if (gradients.size() != specs.size()) {
      Raise(absl::InvalidArgumentError(absl::StrCat("submit got ", gradients.size(),
                                                    " gradients, expected ", specs.size())));
    }
    std::vector<py::array> keep;  // holds the buffers while the GIL is released
    std::vector<ConstMatrixRef> views;
    for (size_t i = 0; i < specs.size(); ++i) {
      keep.push_back(gradients[i].cast<py::array>());
      CheckBuffer(keep.back(), specs[i].rows(), specs[i].cols(),
                  "gradient of '" + specs[i].name + "'", false);
      views.emplace_back(Eigen::Map<const Matrix>(static_cast<const float*>(keep.back().data()),
                                                  specs[i].rows(), specs[i].cols()));
    }
    absl::Status status;
    absl::Duration took;
    {
      py::gil_scoped_release release;
      const absl::Time start = absl::Now();
      status = client_->Submit(absl::MakeConstSpan(views), samples, loss);
      took = absl::Now() - start;
    }
    Check(status);
    return absl::ToDoubleSeconds(took);
  }

  int64_t CopyWeightsInto(const py::list& outputs, double lookahead) {
    const std::vector<ParamSpec>& specs = client_->specs();
    if (outputs.size() != specs.size()) {
      Raise(absl::InvalidArgumentError(absl::StrCat("copy_weights_into got ", outputs.size(),
                                                    " arrays, expected ", specs.size())));
    }
    std::vector<py::array> keep;
    std::vector<MatrixRef> views;
    for (size_t i = 0; i < specs.size(); ++i) {
      keep.push_back(outputs[i].cast<py::array>());
      CheckBuffer(keep.back(), specs[i].rows(), specs[i].cols(),
                  "weights of '" + specs[i].name + "'", true);
      views.emplace_back(Eigen::Map<Matrix>(static_cast<float*>(keep.back().mutable_data()),
                                            specs[i].rows(), specs[i].cols()));
    }
    absl::StatusOr<int64_t> versions;
    {
      py::gil_scoped_release release;
      versions = client_->CopyWeightsInto(absl::MakeSpan(views), lookahead);
    }
    Check(versions.status());
    return *versions;
  }

  void Flush(double timeout_s) {
    Sliced(timeout_s, [&](absl::Duration slice) { return client_->Flush(slice); });
  }

  py::dict FlushAll(double timeout_s) {
    FlushReport report;
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = client_->FlushAll(absl::Seconds(timeout_s), &report);
    }
    py::dict out;
    out["residuals"] = report.residuals;
    out["residual_norm"] = report.residual_norm;
    out["pushes"] = report.pushes;
    out["unacknowledged"] = report.unacknowledged;
    out["unsettled_samples"] = report.unsettled_samples;
    out["unsettled_norm"] = report.unsettled_norm;
    out["stale_dropped_samples"] = report.stale_dropped_samples;
    Check(status);
    return out;
  }

  void WaitForVersionsAbove(const std::vector<int64_t>& versions, double timeout_s) {
    Sliced(timeout_s, [&](absl::Duration slice) {
      return client_->WaitForVersionsAbove(versions, slice);
    });
  }

  std::vector<int64_t> Versions() const {
    std::vector<int64_t> out;
    for (size_t i = 0; i < client_->specs().size(); ++i) out.push_back(client_->version(i));
    return out;
  }

  py::dict Stats() const {
    const ClientStats s = client_->stats();
    py::dict d;
    d["pushes"] = s.pushes;
    d["accepted"] = s.accepted;
    d["duplicates"] = s.duplicates;
    d["refused"] = s.refused;
    d["stale_dropped"] = s.stale_dropped;
    d["stale_dropped_samples"] = s.stale_dropped_samples;
    d["resyncs"] = s.resyncs;
    d["reconnects"] = s.reconnects;
    d["local_steps"] = s.local_steps;
    d["sent_bytes"] = s.sent_bytes;
    d["dense_bytes"] = s.dense_bytes;
    d["received_bytes"] = s.received_bytes;
    d["received_dense_bytes"] = s.received_dense_bytes;
    d["staleness_hist"] = std::vector<int64_t>(s.staleness.begin(), s.staleness.end());
    d["staleness_sum"] = s.staleness_sum;
    return d;
  }

  void RaiseIfFailed() const { Check(client_->status()); }

  void Close() {
    py::gil_scoped_release release;
    client_->Close();
  }

  py::array_t<double> Outstanding(int index) const {
    return ToNumpy(client_->Outstanding(index).cast<double>());
  }
  py::array_t<double> Settled(int index) const {
    if (ledger_ == nullptr) throw py::value_error("created without record_acknowledged=True");
    return ToNumpy(ledger_->Settled(index));
  }
  int64_t Restored() const { return ledger_ == nullptr ? 0 : ledger_->restored(); }

 private:
  // Client::Connect on a thread of its own, so that Ctrl-C is noticed while it retries: the
  // connection is then abandoned to that thread, which closes what it made when it returns.
  void Connect(std::shared_ptr<ModelTable> table, ClientOptions options) {
    struct Attempt {
      std::atomic<bool> done{false};
      absl::StatusOr<std::unique_ptr<Client>> client = absl::UnknownError("not run");
    };
    auto attempt = std::make_shared<Attempt>();
    {
      py::gil_scoped_release release;
      std::thread([attempt, table, options = std::move(options)] {
        attempt->client = Client::Connect(*table, options);
        attempt->done.store(true);
      }).detach();
      while (!attempt->done.load()) {
        absl::SleepFor(absl::Milliseconds(10));
        py::gil_scoped_acquire acquire;
        CheckSignals();
      }
    }
    Check(attempt->client.status());
    client_ = *std::move(attempt->client);
  }

  // Runs `wait(slice)` without the GIL in slices of kSignalSlice until it returns anything but
  // DeadlineExceeded or `timeout_s` is spent, checking for Ctrl-C between slices.
  template <typename Wait>
  void Sliced(double timeout_s, Wait wait) {
    const absl::Time deadline = absl::Now() + absl::Seconds(timeout_s);
    while (true) {
      const absl::Duration left = deadline - absl::Now();
      absl::Status status;
      {
        py::gil_scoped_release release;
        status = wait(std::max(absl::ZeroDuration(), std::min(left, kSignalSlice)));
      }
      if (status.code() != absl::StatusCode::kDeadlineExceeded) return Check(status);
      if (left <= kSignalSlice) {
        Raise(absl::DeadlineExceededError(absl::StrCat(
            "not done within ", timeout_s, " s: ", status.message())));
      }
      CheckSignals();
    }
  }

  std::shared_ptr<AckLedger> ledger_;  // outlives client_, whose link threads call it
  std::unique_ptr<Client> client_;
};

// The progress line of worker/train/progress_line.h from a dict of its fields (the names of
// ProgressLine's members; staleness_hist a list; test_loss, test_accuracy and eval_elapsed_s
// optional): Python workers print what dion-worker prints, through the format's one owner.
std::string FormatProgress(const py::dict& d) {
  ProgressLine p;
  const auto count = [&](const char* key) { return d.contains(key) ? d[key].cast<int64_t>() : 0; };
  p.final = d.contains("final") && d["final"].cast<bool>();
  p.worker = static_cast<int>(count("worker"));
  p.epoch = static_cast<int>(count("epoch"));
  p.steps = count("steps");
  p.samples = count("samples");
  p.elapsed_s = Number(d, "elapsed_s", 0);
  p.samples_per_s = Number(d, "samples_per_s", 0);
  p.loss = Number(d, "loss", 0);
  p.pushes = count("pushes");
  p.accepted = count("accepted");
  p.refused = count("refused");
  p.resyncs = count("resyncs");
  p.reconnects = count("reconnects");
  p.sent_bytes = count("sent_bytes");
  p.dense_bytes = count("dense_bytes");
  p.received_bytes = count("received_bytes");
  p.received_dense_bytes = count("received_dense_bytes");
  p.mean_staleness = Number(d, "mean_staleness", 0);
  if (d.contains("staleness_hist")) {
    p.staleness_hist = d["staleness_hist"].cast<std::vector<int64_t>>();
  }
  const auto optional = [&](const char* key, std::optional<double>* out) {
    if (d.contains(key) && !d[key].is_none()) *out = d[key].cast<double>();
  };
  optional("test_loss", &p.test_loss);
  optional("test_accuracy", &p.test_accuracy);
  optional("eval_elapsed_s", &p.eval_elapsed_s);
  return FormatProgressLine(p);
}

// The split_owners dion-worker's SplitLargeMatrices gives a 2-D Dion matrix of rows x cols with
// `split_threshold` over `num_shards` shards (0: whole), so that Python tables split as C++ ones.
int SplitOwners(int64_t rows, int64_t cols, int64_t split_threshold, int num_shards) {
  std::vector<ParamSpec> table(1);
  table[0].shape = {rows, cols};
  table[0].optimizer = OptimizerKind::kDion;
  SplitLargeMatrices(split_threshold, num_shards, table);
  return table[0].split_owners;
}

py::dict ParseProgress(const std::string& line) {
  absl::StatusOr<ProgressLine> p = ParseProgressLine(line);
  Check(p.status());
  py::dict d;
  d["final"] = p->final;
  d["worker"] = p->worker;
  d["epoch"] = p->epoch;
  d["steps"] = p->steps;
  d["samples"] = p->samples;
  d["elapsed_s"] = p->elapsed_s;
  d["loss"] = p->loss;
  d["accepted"] = p->accepted;
  d["refused"] = p->refused;
  d["staleness_hist"] = p->staleness_hist;
  if (p->test_accuracy.has_value()) d["test_accuracy"] = *p->test_accuracy;
  if (p->eval_elapsed_s.has_value()) d["eval_elapsed_s"] = *p->eval_elapsed_s;
  return d;
}

}  // namespace
}  // namespace dion

PYBIND11_MODULE(_dion_ps, m) {
  m.doc() = "dion-ps client library binding; use dion_ps.RemoteOptimizer (docs/python.md)";
  py::class_<dion::PyClient>(m, "_Client")
      .def(py::init<const std::string&, const py::list&, const py::dict&>(),
           py::arg("model_name"), py::arg("parameters"), py::arg("options"))
      .def("specs", &dion::PyClient::Specs)
      .def("submit", &dion::PyClient::Submit, py::arg("gradients"), py::arg("samples"),
           py::arg("loss"))
      .def("copy_weights_into", &dion::PyClient::CopyWeightsInto, py::arg("outputs"),
           py::arg("lookahead") = 0.0)
      .def("flush", &dion::PyClient::Flush, py::arg("timeout_s"))
      .def("flush_all", &dion::PyClient::FlushAll, py::arg("timeout_s"))
      .def("wait_for_versions_above", &dion::PyClient::WaitForVersionsAbove,
           py::arg("versions"), py::arg("timeout_s"))
      .def("versions", &dion::PyClient::Versions)
      .def("stats", &dion::PyClient::Stats)
      .def("raise_if_failed", &dion::PyClient::RaiseIfFailed)
      .def("close", &dion::PyClient::Close)
      .def("outstanding", &dion::PyClient::Outstanding, py::arg("index"))
      .def("settled", &dion::PyClient::Settled, py::arg("index"))
      .def("restored", &dion::PyClient::Restored);
  m.def("format_progress_line", &dion::FormatProgress, py::arg("fields"));
  m.def("parse_progress_line", &dion::ParseProgress, py::arg("line"));
  m.def("split_owners", &dion::SplitOwners, py::arg("rows"), py::arg("cols"),
        py::arg("split_threshold"), py::arg("num_shards"));
  m.attr("DEFAULT_SPLIT_THRESHOLD") = dion::defaults::kSplitThreshold;
  m.attr("MAX_SPLIT_OWNERS") = dion::kMaxSplitOwners;
  m.def(
      "format_evaluation_line",
      [](int64_t samples, double test_loss, double test_accuracy) {
        return dion::FormatEvaluationLine({samples, test_loss, test_accuracy});
      },
      py::arg("samples"), py::arg("test_loss"), py::arg("test_accuracy"));
  dion::BindData(m);
}
