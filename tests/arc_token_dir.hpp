// The Azure Arc key directory the tests point the library at. Include before
// managed_identity.hpp (the library reads MI_AZURE_ARC_TOKEN_DIR when it is compiled):
// every Arc key file a test writes lives in a fresh temporary directory, and
// support::ArcAgent (arc_agent.hpp) names that directory here.
#pragma once

#include <string>

namespace support {

inline std::string& arc_token_dir_slot() {
  static std::string dir;
  return dir;
}
inline std::string arc_token_dir() { return arc_token_dir_slot(); }
inline void set_arc_token_dir(const std::string& dir) { arc_token_dir_slot() = dir; }

}  // namespace support

#define MI_AZURE_ARC_TOKEN_DIR ::support::arc_token_dir()
