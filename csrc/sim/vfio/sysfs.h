// A tiny read-only sysfs: directories, text files and symlinks, looked up with the
// kernel's path walk (symlinks in the middle of a path, and at its end for list/read, are
// followed relative to the directory holding them). The Machine fills it with what a host
// shows for PCI devices bound to vfio-pci, so discovery code runs unchanged on both.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace fastmap::sim::vfio {

class SysfsTree {
 public:
  // Parent directories are created as needed.
  void add_file(const std::string& path, std::string content);
  void add_link(const std::string& path, std::string target);
  void add_dir(const std::string& path);

  // 0 or -errno (-ENOENT, -ENOTDIR, -EISDIR, -EINVAL for readlink of a non-link, -ELOOP).
  int list_dir(const std::string& path, std::vector<std::string>* out) const;
  int read_file(const std::string& path, std::string* out) const;
  int read_link(const std::string& path, std::string* out) const;
  // 0 directory, 1 file, 2 symlink (the last component is not followed), or -errno.
  int type_of(const std::string& path) const;
  // realpath(3): the canonical path with every symlink followed. 0 or -errno.
  int canonical(const std::string& path, std::string* out) const;

 private:
  enum class Type { kDir, kFile, kLink };
  struct Node {
    Type type = Type::kDir;
    std::string data;  // file content or link target
  };
  // Resolve to a canonical absolute path; follow_last decides whether a final symlink is
  // followed. 0 or -errno.
  int resolve(const std::string& path, bool follow_last, std::string* out) const;
  static std::vector<std::string> split(const std::string& path);

  std::map<std::string, Node> nodes_{{"/", Node{}}};  // canonical path -> node
};

}  // namespace fastmap::sim::vfio
