#include "common/cli.h"

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace dion {
namespace {

// Abseil (20220623) ends the process with exit(1) both after printing --help and on a bad
// flag. While ParseCommandLine runs, this atexit handler replaces that status with
// g_parse_exit_code (0 or kBadFlagsExitCode); -1 outside of parsing.
int g_parse_exit_code = -1;
const CommandLineSpec* g_spec = nullptr;

void ExitFromParse() {
  if (g_parse_exit_code < 0) return;
  if (g_parse_exit_code == kBadFlagsExitCode) {
    std::fprintf(stderr, "%s: bad flags (see above); `%s --help` lists them\n",
                 g_spec->program.c_str(), g_spec->program.c_str());
  }
  std::cout.flush();
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(g_parse_exit_code);
}

// Whether argv asks for help or the version (Abseil's usage flags), before a "--".
bool AsksForUsage(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") return false;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) continue;
    arg = arg.substr(0, arg.find('='));
    for (absl::string_view usage_flag : {"help", "helpfull", "helpshort", "helppackage",
                                         "helpon", "helpmatch", "version", "only_check_args"}) {
      if (arg == usage_flag) return true;
    }
  }
  return false;
}

}  // namespace

void ParseCommandLineOrExit(int argc, char** argv, const CommandLineSpec& spec) {
  absl::FlagsUsageConfig usage;
  // The binary's own flags, and the TLS client flags of the binaries that link them.
  usage.contains_help_flags = [file = spec.flags_file](absl::string_view path) {
    return absl::EndsWith(path, file) || absl::EndsWith(path, "common/tls_flags.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(spec.usage);
  static const bool registered = std::atexit(ExitFromParse) == 0;
  (void)registered;
  g_spec = &spec;
  g_parse_exit_code = AsksForUsage(argc, argv) ? 0 : kBadFlagsExitCode;
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  g_parse_exit_code = -1;
  if (positional.size() > 1) {
    std::fprintf(stderr, "%s: unexpected argument '%s' (all options are --flags)\n",
                 spec.program.c_str(), positional[1]);
    std::exit(kBadFlagsExitCode);
  }
}

int BadFlags(absl::string_view program, absl::string_view message) {
  std::fprintf(stderr, "%s: bad flags: %s\n", std::string(program).c_str(),
               std::string(message).c_str());
  return kBadFlagsExitCode;
}

}  // namespace dion
