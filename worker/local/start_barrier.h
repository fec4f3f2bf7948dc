// The start of training in `dion local`: each dion-worker loads its data, connects, prints
// its "training on ..." line and then waits for a start file (dion-worker --start_file). The
// file is created once every worker is ready, so that no worker trains while the others still
// load the data set on the same cores, and the training clock does not count the loading.
//
// Thread-safety: none; the supervisor's thread owns it.
#ifndef DION_WORKER_LOCAL_START_BARRIER_H_
#define DION_WORKER_LOCAL_START_BARRIER_H_

#include <string>
#include <vector>

namespace dion {

class StartBarrier {
 public:
  // `path`: the start file; `workers`: how many must be ready.
  StartBarrier(std::string path, int workers);

  const std::string& path() const { return path_; }
  // Removes a start file left in place by an earlier run, before the workers start.
  void Reset();
  // Worker `index` (in [0, workers)) is ready; the last one to be ready creates the file.
  void Ready(int index);
  bool ready(int index) const;
  // Why the start file could not be created; empty while it could.
  const std::string& error() const { return error_; }

 private:
  const std::string path_;
  std::vector<bool> ready_;
  int waiting_;
  std::string error_;
};

}  // namespace dion

#endif  // DION_WORKER_LOCAL_START_BARRIER_H_
