#include "common/contribution.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace dion {
namespace {

constexpr absl::string_view kNonFinitePayload = "dion.v1/non-finite";

// InvalidArgument naming the first non-finite entry of M, or the first above the limit.
absl::Status CheckEntries(const Matrix& M, absl::string_view parameter, absl::string_view what,
                          double limit) {
  if (M.allFinite() && (M.size() == 0 || M.cwiseAbs().maxCoeff() <= limit)) {
    return absl::OkStatus();
  }
  for (int64_t i = 0; i < M.rows(); ++i) {
    for (int64_t j = 0; j < M.cols(); ++j) {
      const float x = M(i, j);
      if (!std::isfinite(x)) {
        return NonFiniteError(absl::StrCat("parameter '", parameter, "': ", what,
                                           " has a non-finite entry ", x, " at (", i, ", ", j,
                                           ")"));
      }
      if (std::abs(x) > limit) {
        return absl::InvalidArgumentError(absl::StrCat(
            "parameter '", parameter, "': ", what, " entry ", x, " at (", i, ", ", j,
            ") exceeds the magnitude limit ", limit));
      }
    }
  }
  return absl::OkStatus();
}

// The tall side's factor of a contribution to one owner's rows of a split parameter.
absl::Status CheckBlockRows(const ParamSpec& spec, const LowRankFactors& f, RowBlock rows) {
  const int64_t m = spec.rows(), n = spec.cols();
  const bool tall_rows = m >= n;
  const int64_t got = tall_rows ? f.P.rows() : f.R.rows();
  const int64_t other = tall_rows ? f.R.rows() : f.P.rows();
  const int64_t other_expected = tall_rows ? n : m;
  const char* factor = tall_rows ? "P" : "R";
  const char* other_factor = tall_rows ? "R" : "P";
  if (got != rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter '", spec.name, "' (", m, " x ", n, ") is split by rows of its tall side; this "
        "shard owns rows [", rows.begin, ", ", rows.end, "), so ", factor, " must have ",
        rows.size(), " rows (that block), got ", got));
  }
  if (other != other_expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter '", spec.name, "' (", m, " x ", n, ") is split: ", other_factor,
        " stays whole with ", other_expected, " rows, got ", other));
  }
  return absl::OkStatus();
}

absl::Status CheckLowRank(const ParamSpec& spec, const LowRankFactors& f, RowBlock rows) {
  const int64_t m = spec.rows(), n = spec.cols();
  const int64_t r = f.P.cols();
  const auto error = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("parameter '", spec.name, "': ", parts...));
  };
  if (rows.size() > 0) {
    if (absl::Status s = CheckBlockRows(spec, f, rows); !s.ok()) return s;
  } else if (f.P.rows() != m) {
    return error("P has ", f.P.rows(), " rows, expected m = ", m, " (P is m x r for an ", m,
                 " x ", n, " parameter)");
  }
  if (rows.size() == 0 && f.R.rows() != n) {
    return error("R has ", f.R.rows(), " rows, expected n = ", n, " (R is n x r for an ", m,
                 " x ", n, " parameter)");
  }
  if (f.R.cols() != r) {
    return error("P has ", r, " columns but R has ", f.R.cols(), "; both must have rank r");
  }
  if (r < 1 || r > std::min(m, n)) {
    return error("rank ", r, " is outside [1, min(m, n) = ", std::min(m, n), "]");
  }
  const double limit = kMaxContributionMagnitude;
  if (absl::Status s = CheckEntries(f.P, spec.name, "P", limit); !s.ok()) return s;
  if (absl::Status s = CheckEntries(f.R, spec.name, "R", limit); !s.ok()) return s;
  // Bound on every entry of P R^T, summed over the rank.
  const double bound = static_cast<double>(r) * f.P.cwiseAbs().maxCoeff() *
                       f.R.cwiseAbs().maxCoeff();
  if (bound > kMaxContributionMagnitude) {
    return error("P R^T may reach ", bound, ", above the magnitude limit ",
                 kMaxContributionMagnitude);
  }
  return absl::OkStatus();
}

absl::Status CheckDense(const ParamSpec& spec, const Matrix& G) {
  if (G.rows() != spec.rows() || G.cols() != spec.cols()) {
    return absl::InvalidArgumentError(absl::StrCat("parameter '", spec.name, "': gradient is ",
                                                   G.rows(), " x ", G.cols(), ", expected ",
                                                   spec.rows(), " x ", spec.cols()));
  }
  return CheckEntries(G, spec.name, "gradient", kMaxContributionMagnitude);
}

}  // namespace

absl::Status NonFiniteError(std::string message) {
  absl::Status status = absl::InvalidArgumentError(std::move(message));
  status.SetPayload(kNonFinitePayload, absl::Cord("1"));
  return status;
}

bool IsNonFiniteError(const absl::Status& status) {
  return status.GetPayload(kNonFinitePayload).has_value();
}

absl::Status ValidateWorkerId(absl::string_view worker_id) {
  if (worker_id.empty()) return absl::InvalidArgumentError("worker_id must not be empty");
  if (worker_id.size() > kMaxWorkerIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("worker_id is ", worker_id.size(),
                                                   " bytes long, above the limit of ",
                                                   kMaxWorkerIdBytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status ValidatePayload(const ParamSpec& spec, const Contribution& contribution,
                             RowBlock rows) {
  if (spec.optimizer == OptimizerKind::kDion) {
    if (!contribution.is_low_rank()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter '", spec.name, "' uses dion: send low-rank factors (P, R), not a dense "
          "gradient"));
    }
    return CheckLowRank(spec, contribution.factors(), rows);
  }
  if (contribution.is_low_rank()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameter '", spec.name, "' uses ", OptimizerKindName(spec.optimizer),
        ": send a dense gradient, not low-rank factors"));
  }
  return CheckDense(spec, contribution.gradient());
}

absl::Status CheckContribution(const Contribution& contribution,
                               const ContributionContext& context) {
  const ParamSpec& spec = context.spec;
  if (absl::Status s = ValidateWorkerId(contribution.worker_id); !s.ok()) return s;
  if (!context.worker_registered) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker '", contribution.worker_id,
                     "' is not registered; call RegisterModel with its worker_id first"));
  }
  if (contribution.sample_count <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("parameter '", spec.name, "': sample_count must be > 0, got ",
                     contribution.sample_count));
  }
  if (contribution.base_version < 0 ||
      contribution.base_version > context.version + context.lead) {
    return absl::OutOfRangeError(absl::StrCat(
        "parameter '", spec.name, "': base_version ", contribution.base_version,
        " is outside [0, ", context.version + context.lead, "]",
        context.lead == 0 ? ", the current version"
                          : absl::StrCat(": this follower is at version ", context.version,
                                         " and its leader at most ", context.lead, " ahead")));
  }
  return ValidatePayload(spec, contribution, context.rows);
}

absl::StatusOr<ValidatedContribution> Validate(Contribution contribution,
                                               const ContributionContext& context) {
  if (absl::Status s = CheckContribution(contribution, context); !s.ok()) return s;
  return ValidatedContribution(std::move(contribution));
}


absl::string_view PushOutcomeName(PushOutcome outcome) {
  switch (outcome) {
    case PushOutcome::kAccepted: return "accepted";
    case PushOutcome::kDuplicate: return "duplicate";
    case PushOutcome::kStale: return "stale";
    case PushOutcome::kRejected: return "rejected";
  }
  return "unknown";
}

absl::string_view CloseReasonName(CloseReason reason) {
  switch (reason) {
    case CloseReason::kSamples: return "samples";
    case CloseReason::kWorkers: return "workers";
    case CloseReason::kDeadline: return "deadline";
    case CloseReason::kFull: return "full";
    case CloseReason::kFlush: return "flush";
  }
  return "unknown";
}

}  // namespace dion
