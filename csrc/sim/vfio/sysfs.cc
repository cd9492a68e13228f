#include "sim/vfio/sysfs.h"

#include <cerrno>

namespace fastmap::sim::vfio {

namespace {
constexpr int kMaxLinks = 40;  // the kernel's MAXSYMLINKS

std::string join(const std::vector<std::string>& parts) {
  if (parts.empty()) return "/";
  std::string out;
  for (const auto& p : parts) out += "/" + p;
  return out;
}
}  // namespace

std::vector<std::string> SysfsTree::split(const std::string& path) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : path) {
    if (c == '/') {
      if (!cur.empty()) parts.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) parts.push_back(cur);
  return parts;
}

void SysfsTree::add_dir(const std::string& path) {
  std::vector<std::string> parts = split(path);
  std::vector<std::string> prefix;
  for (const auto& p : parts) {
    prefix.push_back(p);
    nodes_.try_emplace(join(prefix), Node{});
  }
}

void SysfsTree::add_file(const std::string& path, std::string content) {
  std::vector<std::string> parts = split(path);
  parts.pop_back();
  add_dir(join(parts));
  nodes_[join(split(path))] = Node{Type::kFile, std::move(content)};
}

void SysfsTree::add_link(const std::string& path, std::string target) {
  std::vector<std::string> parts = split(path);
  parts.pop_back();
  add_dir(join(parts));
  nodes_[join(split(path))] = Node{Type::kLink, std::move(target)};
}

int SysfsTree::resolve(const std::string& path, bool follow_last, std::string* out) const {
  if (path.empty() || path[0] != '/') return -ENOENT;  // absolute paths only
  std::vector<std::string> todo = split(path);
  std::vector<std::string> done;  // canonical components resolved so far
  int links = 0;
  std::size_t i = 0;
  while (i < todo.size()) {
    const std::string& part = todo[i];
    if (part == ".") {
      ++i;
      continue;
    }
    if (part == "..") {
      if (!done.empty()) done.pop_back();
      ++i;
      continue;
    }
    auto here = nodes_.find(join(done));
    if (here == nodes_.end() || here->second.type != Type::kDir) return -ENOTDIR;
    done.push_back(part);
    auto it = nodes_.find(join(done));
    if (it == nodes_.end()) return -ENOENT;
    const bool last = i + 1 == todo.size();
    if (it->second.type == Type::kLink && (!last || follow_last)) {
      if (++links > kMaxLinks) return -ELOOP;
      done.pop_back();
      std::vector<std::string> rest(todo.begin() + static_cast<std::ptrdiff_t>(i) + 1, todo.end());
      std::vector<std::string> target = split(it->second.data);
      if (!it->second.data.empty() && it->second.data[0] == '/') done.clear();
      todo = target;
      todo.insert(todo.end(), rest.begin(), rest.end());
      i = 0;
      continue;
    }
    ++i;
  }
  *out = join(done);
  return 0;
}

int SysfsTree::list_dir(const std::string& path, std::vector<std::string>* out) const {
  std::string canon;
  if (int rc = resolve(path, true, &canon)) return rc;
  auto it = nodes_.find(canon);
  if (it == nodes_.end()) return -ENOENT;
  if (it->second.type != Type::kDir) return -ENOTDIR;
  out->clear();
  const std::string prefix = canon == "/" ? "/" : canon + "/";
  for (auto c = nodes_.upper_bound(prefix); c != nodes_.end(); ++c) {
    if (c->first.compare(0, prefix.size(), prefix) != 0) break;
    if (c->first.find('/', prefix.size()) == std::string::npos) {
      out->push_back(c->first.substr(prefix.size()));
    }
  }
  return 0;
}

int SysfsTree::read_file(const std::string& path, std::string* out) const {
  std::string canon;
  if (int rc = resolve(path, true, &canon)) return rc;
  auto it = nodes_.find(canon);
  if (it == nodes_.end()) return -ENOENT;
  if (it->second.type == Type::kDir) return -EISDIR;
  *out = it->second.data;
  return 0;
}

int SysfsTree::read_link(const std::string& path, std::string* out) const {
  std::string canon;
  if (int rc = resolve(path, false, &canon)) return rc;
  auto it = nodes_.find(canon);
  if (it == nodes_.end()) return -ENOENT;
  if (it->second.type != Type::kLink) return -EINVAL;
  *out = it->second.data;
  return 0;
}

int SysfsTree::canonical(const std::string& path, std::string* out) const {
  std::string canon;
  if (int rc = resolve(path, true, &canon)) return rc;
  if (nodes_.find(canon) == nodes_.end()) return -ENOENT;
  *out = canon;
  return 0;
}

int SysfsTree::type_of(const std::string& path) const {
  std::string canon;
  if (int rc = resolve(path, false, &canon)) return rc;
  auto it = nodes_.find(canon);
  if (it == nodes_.end()) return -ENOENT;
  switch (it->second.type) {
    case Type::kDir: return 0;
    case Type::kFile: return 1;
    case Type::kLink: return 2;
  }
  return -ENOENT;
}

}  // namespace fastmap::sim::vfio
