// Replays fuzz inputs through a target's LLVMFuzzerTestOneInput without a fuzzing
// engine, so the corpus runs in ordinary ctest (under ASan and UBSan when the
// compiler has them). Usage:
//   fuzz_replay_<target> [-v] <file or directory>...
// Directories are walked recursively; files are run in sorted order, each from an
// exact-size heap copy. Prints "N passed, 0 failed"; an invariant violation or a
// sanitizer report ends the process (naming the file) before that.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
#define MI_REPLAY_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define MI_REPLAY_SANITIZER 1
#endif
#endif
#ifdef MI_REPLAY_SANITIZER
extern "C" void __sanitizer_set_death_callback(void (*callback)(void));
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

char g_current[4096];  // the input being run, for the crash note

void note_current() {
  if (g_current[0] == '\0') return;
  // write(2) is not portable; fputs on stderr is unbuffered and good enough here.
  std::fputs("\nfuzz replay: the failing input is ", stderr);
  std::fputs(g_current, stderr);
  std::fputs("\n", stderr);
}

void on_signal(int sig) {
  note_current();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

bool read_file(const fs::path& path, std::vector<char>& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

}  // namespace

int main(int argc, char** argv) {
  bool verbose = false;
  std::vector<fs::path> files;
  size_t failed = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "-v") == 0) {
      verbose = true;
      continue;
    }
    fs::path arg(argv[i]);
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      for (fs::recursive_directory_iterator it(arg, ec), end; !ec && it != end; it.increment(ec))
        if (it->is_regular_file(ec)) files.push_back(it->path());
      if (ec) {
        std::fprintf(stderr, "fuzz replay: cannot walk %s: %s\n", argv[i], ec.message().c_str());
        ++failed;
      }
    } else if (fs::is_regular_file(arg, ec)) {
      files.push_back(arg);
    } else {
      std::fprintf(stderr, "fuzz replay: %s is neither a file nor a directory\n", argv[i]);
      ++failed;
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty() && failed == 0) {
    std::fprintf(stderr, "usage: %s [-v] <corpus file or directory>... (no input found)\n", argv[0]);
    return 2;
  }

  std::signal(SIGABRT, on_signal);
  std::signal(SIGSEGV, on_signal);
  std::signal(SIGFPE, on_signal);
  std::signal(SIGILL, on_signal);
#ifdef MI_REPLAY_SANITIZER
  __sanitizer_set_death_callback(note_current);
#endif

  size_t passed = 0;
  for (const auto& path : files) {
    std::vector<char> bytes;
    if (!read_file(path, bytes)) {
      std::fprintf(stderr, "fuzz replay: cannot read %s\n", path.string().c_str());
      ++failed;
      continue;
    }
    std::string name = path.string();
    std::snprintf(g_current, sizeof g_current, "%s", name.c_str());
    if (verbose) std::printf("%s (%zu bytes)\n", name.c_str(), bytes.size());
    // Exact size, so that a read one byte past the input is a heap overflow.
    std::unique_ptr<uint8_t[]> data(new uint8_t[bytes.size()]);
    if (!bytes.empty()) std::memcpy(data.get(), bytes.data(), bytes.size());
    LLVMFuzzerTestOneInput(data.get(), bytes.size());
    ++passed;
  }
  g_current[0] = '\0';
  std::printf("%zu passed, %zu failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
