// The start every dion-ps binary's main shares: Abseil flags, --help listing only the
// binary's own flags, and one exit status for every kind of bad command line.
//
// Thread-safety: ParseCommandLineOrExit is called once, from main, before other threads start.
#ifndef DION_COMMON_CLI_H_
#define DION_COMMON_CLI_H_

#include <string>

#include "absl/strings/string_view.h"

namespace dion {

// The exit status of a bad command line: an unknown flag, a value that does not parse or is
// out of range, a positional argument.
inline constexpr int kBadFlagsExitCode = 2;

struct CommandLineSpec {
  std::string program;     // e.g. "dion-worker": the prefix of every message
  std::string flags_file;  // path suffix of the file whose flags --help lists, "server/main.cc"
  std::string usage;       // what --help prints above the flags
};

// Parses argv into the Abseil flags. --help (and --helpfull, --version, ...) print and exit
// 0; an unknown flag or a value that does not parse (Abseil names it on stderr) and a
// positional argument exit with kBadFlagsExitCode.
void ParseCommandLineOrExit(int argc, char** argv, const CommandLineSpec& spec);

// Prints "<program>: bad flags: <message>" on stderr and returns kBadFlagsExitCode.
int BadFlags(absl::string_view program, absl::string_view message);

}  // namespace dion

#endif  // DION_COMMON_CLI_H_
