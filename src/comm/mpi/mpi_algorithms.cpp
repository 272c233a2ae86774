// OpenMPI coll/tuned's algorithm control variables through MPI_T.
#include "flashcomm/mpi_algorithms.hpp"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "comm/mpi/mpi_check.hpp"
#include "flashcomm/error.hpp"
#include "flashcomm/log.hpp"

namespace flashcomm {

namespace {

constexpr const char* kDynamicRules = "coll_tuned_use_dynamic_rules";
constexpr const char* kTunedPriority = "coll_tuned_priority";

// The variable of the MPI call MpiCommunicator makes for each op (see the
// header's table), indexed by CommOp.
constexpr std::array<const char*, 4> kVariables = {
    "coll_tuned_allreduce_algorithm", "coll_tuned_reduce_scatter_block_algorithm",
    "coll_tuned_allgather_algorithm", "coll_tuned_alltoall_algorithm"};

// Components that outrank coll/tuned by default yet never take its place on
// an intra-communicator of two or more ranks: self serves one-rank
// communicators, inter inter-communicators, and sync only adds barriers
// around the component below it.
constexpr std::array<std::string_view, 4> kHarmlessAbove = {"tuned", "self", "inter", "sync"};

std::string error_text(int code) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    return fmt::format("MPI error {}", code);
  }
  return std::string(text, static_cast<std::size_t>(length));
}

std::string library_name() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int length = 0;
  if (MPI_Get_library_version(version, &length) != MPI_SUCCESS) {
    return "this MPI library";
  }
  std::string name(version, static_cast<std::size_t>(length));
  return name.substr(0, name.find_first_of("\n,"));
}

struct CvarInfo {
  int index = -1;
  std::string name;
  MPI_Datatype type = MPI_DATATYPE_NULL;
  MPI_T_enum enumtype = MPI_T_ENUM_NULL;
};

std::optional<CvarInfo> find_cvar(const std::string& name) {
  CvarInfo info;
  info.name = name;
  if (MPI_T_cvar_get_index(name.c_str(), &info.index) != MPI_SUCCESS) {
    return std::nullopt;
  }
  int verbosity = 0;
  int bind = 0;
  int scope = 0;
  int name_length = 0;  // 0: the name is not wanted
  int desc_length = 0;
  if (MPI_T_cvar_get_info(info.index, nullptr, &name_length, &verbosity, &info.type, &info.enumtype,
                          nullptr, &desc_length, &bind, &scope) != MPI_SUCCESS ||
      bind != MPI_T_BIND_NO_OBJECT) {
    return std::nullopt;
  }
  return info;
}

// A one-value int or bool variable as an int; nullopt with `why` otherwise.
std::optional<int> read_scalar(const CvarInfo& info, std::string& why) {
  if (info.type != MPI_INT && info.type != MPI_C_BOOL) {
    why = fmt::format("control variable {} is neither an int nor a bool", info.name);
    return std::nullopt;
  }
  MPI_T_cvar_handle handle = MPI_T_CVAR_HANDLE_NULL;
  int count = 0;
  int rc = MPI_T_cvar_handle_alloc(info.index, nullptr, &handle, &count);
  if (rc != MPI_SUCCESS || count != 1) {
    why =
        fmt::format("control variable {} cannot be read: {}", info.name,
                    rc != MPI_SUCCESS ? error_text(rc) : fmt::format("it holds {} values", count));
    if (rc == MPI_SUCCESS) {
      MPI_T_cvar_handle_free(&handle);
    }
    return std::nullopt;
  }
  int value = 0;
  if (info.type == MPI_INT) {
    rc = MPI_T_cvar_read(handle, &value);
  } else {
    bool flag = false;  // MPI_C_BOOL is C's _Bool, which C++'s bool matches
    rc = MPI_T_cvar_read(handle, &flag);
    value = flag ? 1 : 0;
  }
  MPI_T_cvar_handle_free(&handle);
  if (rc != MPI_SUCCESS) {
    why = fmt::format("control variable {} cannot be read: {}", info.name, error_text(rc));
    return std::nullopt;
  }
  return value;
}

// The names of every control variable of this process.
std::vector<CvarInfo> all_cvars() {
  std::vector<CvarInfo> out;
  int n = 0;
  if (MPI_T_cvar_get_num(&n) != MPI_SUCCESS) {
    return out;
  }
  for (int i = 0; i < n; ++i) {
    char name[256] = {};
    int name_length = static_cast<int>(sizeof(name));
    int verbosity = 0;
    int bind = 0;
    int scope = 0;
    int desc_length = 0;
    CvarInfo info;
    info.index = i;
    if (MPI_T_cvar_get_info(i, name, &name_length, &verbosity, &info.type, &info.enumtype, nullptr,
                            &desc_length, &bind, &scope) == MPI_SUCCESS &&
        bind == MPI_T_BIND_NO_OBJECT) {
      info.name = name;
      out.push_back(info);
    }
  }
  return out;
}

// True on every rank when any rank of `comm` passes true.
bool any_rank(MPI_Comm comm, bool local) {
  int flag = local ? 1 : 0;
  FC_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &flag, 1, MPI_INT, MPI_MAX, comm));
  return flag != 0;
}

}  // namespace

void request_algorithm_control() {
  // Overwrites a user's 0: forcing cannot work without it, and it changes
  // nothing else (see the header).
  if (setenv("OMPI_MCA_coll_tuned_use_dynamic_rules", "1", 1) != 0) {
    throw CommError("cannot set OMPI_MCA_coll_tuned_use_dynamic_rules=1 in the environment");
  }
}

AlgorithmControl::AlgorithmControl(MPI_Comm comm) {
  for (std::size_t i = 0; i < ops_.size(); ++i) {
    ops_[i].variable = kVariables[i];
  }
  look_up_locally();

  // Agree: forcible on every rank with the same algorithms, or on none. Per
  // op: available, the number of algorithms and a checksum of their values.
  std::array<int, 12> mins{};
  for (std::size_t i = 0; i < ops_.size(); ++i) {
    int checksum = 0;
    for (std::size_t k = 0; k < ops_[i].algorithms.size(); ++k) {
      checksum += ops_[i].algorithms[k].value * static_cast<int>(k + 1);
    }
    mins[3 * i] = ops_[i].available ? 1 : 0;
    mins[3 * i + 1] = static_cast<int>(ops_[i].algorithms.size());
    mins[3 * i + 2] = checksum;
  }
  std::array<int, 12> maxs = mins;
  FC_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, mins.data(), 12, MPI_INT, MPI_MIN, comm));
  FC_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, maxs.data(), 12, MPI_INT, MPI_MAX, comm));
  for (std::size_t i = 0; i < ops_.size(); ++i) {
    OpControl& c = ops_[i];
    const bool agreed = mins[3 * i] == 1 && mins[3 * i + 1] == maxs[3 * i + 1] &&
                        mins[3 * i + 2] == maxs[3 * i + 2];
    if (c.available && !agreed) {
      c.available = false;
      c.reason = fmt::format(
          "{} is not forcible with the same algorithms on every rank (the others log why)",
          c.variable);
      c.algorithms.clear();
    } else if (!c.available) {
      log::debug("cannot force {}: {}", to_string(static_cast<CommOp>(i)), c.reason);
    }
  }
}

void AlgorithmControl::look_up_locally() {
  auto unavailable = [this](const std::string& reason) {
    for (OpControl& c : ops_) {
      c.reason = reason;
    }
  };

  // 1. MPI_T itself.
  int thread_level = MPI_THREAD_SINGLE;
  FC_CHECK_MPI(MPI_Query_thread(&thread_level));
  int provided = 0;
  const int rc = MPI_T_init_thread(thread_level, &provided);
  if (rc != MPI_SUCCESS) {
    unavailable(fmt::format("MPI_T_init_thread failed: {}", error_text(rc)));
    return;
  }
  mpi_t_started_ = true;

  // 2. coll/tuned is loaded, honours forced algorithms and can be selected.
  const std::optional<CvarInfo> dynamic = find_cvar(kDynamicRules);
  if (!dynamic) {
    unavailable(fmt::format(
        "control variable {} not found: {} has no OpenMPI coll/tuned component, or it is "
        "excluded (OMPI_MCA_coll)",
        kDynamicRules, library_name()));
    return;
  }
  std::string why;
  const std::optional<int> dynamic_on = read_scalar(*dynamic, why);
  if (!dynamic_on) {
    unavailable(why);
    return;
  }
  if (*dynamic_on == 0) {
    unavailable(fmt::format(
        "{} is false, so coll/tuned ignores forced algorithms; OpenMPI reads it only at "
        "MPI_Init: start the ranks with OMPI_MCA_coll_tuned_use_dynamic_rules=1",
        kDynamicRules));
    return;
  }
  int tuned_priority = 0;
  if (const std::optional<CvarInfo> p = find_cvar(kTunedPriority)) {
    if (const std::optional<int> value = read_scalar(*p, why)) {
      tuned_priority = *value;
      if (tuned_priority <= 0) {
        unavailable(fmt::format("{} is {}: coll/tuned serves no communicator", kTunedPriority,
                                tuned_priority));
        return;
      }
    }
  }

  // 3. Each op's variable: one int with an enumeration of algorithms.
  for (OpControl& c : ops_) {
    const std::optional<CvarInfo> info = find_cvar(c.variable);
    if (!info) {
      c.reason = fmt::format("control variable {} not found in {}", c.variable, library_name());
      continue;
    }
    if (info->type != MPI_INT || info->enumtype == MPI_T_ENUM_NULL) {
      c.reason = fmt::format("control variable {} is not an int with an enumeration of algorithms",
                             c.variable);
      continue;
    }
    int count = 0;
    int alloc_rc = MPI_T_cvar_handle_alloc(info->index, nullptr, &c.handle, &count);
    if (alloc_rc == MPI_SUCCESS && count != 1) {
      MPI_T_cvar_handle_free(&c.handle);
      c.reason = fmt::format("control variable {} holds {} values, expected 1", c.variable, count);
      continue;
    }
    if (alloc_rc == MPI_SUCCESS) {
      alloc_rc = MPI_T_cvar_read(c.handle, &c.original);
    }
    if (alloc_rc != MPI_SUCCESS) {
      if (c.handle != MPI_T_CVAR_HANDLE_NULL) {
        MPI_T_cvar_handle_free(&c.handle);
      }
      c.reason =
          fmt::format("control variable {} cannot be read: {}", c.variable, error_text(alloc_rc));
      continue;
    }
    int items = 0;
    char enum_name[256] = {};
    int enum_name_length = static_cast<int>(sizeof(enum_name));
    if (MPI_T_enum_get_info(info->enumtype, &items, enum_name, &enum_name_length) != MPI_SUCCESS) {
      items = 0;
    }
    std::string original_name = std::to_string(c.original);
    for (int k = 0; k < items; ++k) {
      MpiAlgorithm a;
      char name[256] = {};
      int name_length = static_cast<int>(sizeof(name));
      if (MPI_T_enum_get_item(info->enumtype, k, &a.value, name, &name_length) != MPI_SUCCESS) {
        continue;
      }
      a.name = name;
      if (a.value == c.original) {
        original_name = a.name;
      }
      // coll/tuned's 0 ("ignore") means: the library decides.
      if (a.value > 0) {
        c.algorithms.push_back(a);
      }
    }
    if (c.algorithms.empty()) {
      c.reason = fmt::format("the enumeration of {} names no algorithm", c.variable);
      continue;
    }
    c.available = true;
    if (c.original != 0) {
      warnings_.push_back(fmt::format(
          "{} is already {} ({}) in this process, so the library default measured is that "
          "algorithm",
          c.variable, c.original, original_name));
    }
  }

  // 4. Components that outrank coll/tuned may serve some collectives instead.
  for (const CvarInfo& info : all_cvars()) {
    const std::string_view name = info.name;
    constexpr std::string_view prefix = "coll_";
    constexpr std::string_view suffix = "_priority";
    if (name.size() <= prefix.size() + suffix.size() || name.substr(0, prefix.size()) != prefix ||
        name.substr(name.size() - suffix.size()) != suffix) {
      continue;
    }
    const std::string_view component =
        name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (std::find(kHarmlessAbove.begin(), kHarmlessAbove.end(), component) !=
        kHarmlessAbove.end()) {
      continue;
    }
    std::string unused;
    const std::optional<int> priority = read_scalar(info, unused);
    if (priority && *priority > tuned_priority) {
      warnings_.push_back(fmt::format(
          "coll/{} has priority {}, above coll/tuned's {}: collectives it serves ignore the "
          "forced algorithms",
          component, *priority, tuned_priority));
    }
  }
}

AlgorithmControl::~AlgorithmControl() {
  for (OpControl& c : ops_) {
    if (c.handle != MPI_T_CVAR_HANDLE_NULL) {
      // A destructor must not throw; duplicate_forcing restored it already.
      MPI_T_cvar_write(c.handle, &c.original);
      MPI_T_cvar_handle_free(&c.handle);
    }
  }
  if (mpi_t_started_) {
    MPI_T_finalize();
  }
}

ForcedCommunicator AlgorithmControl::duplicate_forcing(MPI_Comm parent, CommOp op,
                                                       const MpiAlgorithm& algorithm) {
  OpControl& c = ops_[index(op)];
  if (!c.available) {
    throw ConfigError(fmt::format("cannot force the algorithm of {}: {}", to_string(op), c.reason));
  }
  const std::string what =
      fmt::format("forcing {} = {} ({})", c.variable, algorithm.value, algorithm.name);

  // 1. Set the variable on this rank and read it back.
  std::string failure;
  int value = algorithm.value;
  int read_back = -1;
  int rc = MPI_T_cvar_write(c.handle, &value);
  if (rc == MPI_SUCCESS) {
    rc = MPI_T_cvar_read(c.handle, &read_back);
  }
  if (rc != MPI_SUCCESS) {
    failure = error_text(rc);
  } else if (read_back != algorithm.value) {
    failure = fmt::format("the variable reads back {}", read_back);
  }

  // 2. No rank may create the communicator alone.
  if (any_rank(parent, !failure.empty())) {
    int original = c.original;
    MPI_T_cvar_write(c.handle, &original);  // best effort: we are failing anyway
    throw CommError(fmt::format("{} failed: {}", what,
                                failure.empty() ? "it failed on another rank" : failure));
  }

  // 3. coll/tuned reads the variable as it attaches to the new communicator.
  MPI_Comm dup = MPI_COMM_NULL;
  const int dup_rc = MPI_Comm_dup(parent, &dup);

  // 4. Restore at once, so that later communicators keep the library's choice.
  int original = c.original;
  const int restore_rc = MPI_T_cvar_write(c.handle, &original);
  if (dup_rc != MPI_SUCCESS) {
    failure = fmt::format("MPI_Comm_dup: {}", error_text(dup_rc));
  } else if (restore_rc != MPI_SUCCESS) {
    failure = fmt::format("restoring {} to {}: {}", c.variable, c.original, error_text(restore_rc));
  }
  if (any_rank(parent, !failure.empty())) {
    if (dup != MPI_COMM_NULL) {
      MPI_Comm_free(&dup);
    }
    throw CommError(fmt::format("{} failed: {}", what,
                                failure.empty() ? "it failed on another rank" : failure));
  }
  ForcedCommunicator forced;
  forced.comm = std::make_unique<MpiCommunicator>(dup, algorithm.name, nullptr);
  forced.value_read_back = read_back;
  return forced;
}

int AlgorithmControl::current_value(CommOp op) const {
  const OpControl& c = ops_[index(op)];
  if (!c.available) {
    throw ConfigError(fmt::format("cannot read the algorithm of {}: {}", to_string(op), c.reason));
  }
  int value = 0;
  FC_CHECK_MPI(MPI_T_cvar_read(c.handle, &value));
  return value;
}

}  // namespace flashcomm
