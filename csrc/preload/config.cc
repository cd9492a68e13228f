#include "preload/config.h"

#include <cstdlib>

namespace fastmap::preload {

namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

bool number(const std::string& v, unsigned long long* out) {
  if (v.empty()) return false;
  char* end = nullptr;
  *out = std::strtoull(v.c_str(), &end, 0);
  return *end == '\0';
}

bool parse_device(const std::string& value, DeviceSetup* d, std::string* err) {
  std::size_t start = 0;
  bool first = true;
  while (start <= value.size()) {
    std::size_t comma = value.find(',', start);
    if (comma == std::string::npos) comma = value.size();
    const std::string item = trim(value.substr(start, comma - start));
    start = comma + 1;
    if (first) {
      d->kind = item;
      first = false;
      continue;
    }
    const auto eq = item.find('=');
    const std::string k = item.substr(0, eq), v = eq == std::string::npos ? "" : item.substr(eq + 1);
    unsigned long long n = 0;
    if (k == "bdf") {
      d->bdf = v;
    } else if (k == "iommu") {
      d->iommu = v;
    } else if (k == "group" && number(v, &n)) {
      d->group = static_cast<int>(n);
    } else if (k == "dirty" && number(v, &n)) {
      d->dirty = n != 0;
    } else {
      *err = "bad device option '" + item + "'";
      return false;
    }
  }
  return true;
}

}  // namespace

bool parse_config(const std::string& text, SimSetup* out, std::string* err) {
  fastmap_sim_config_init(&out->config);
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find_first_of(";\n", start);
    if (end == std::string::npos) end = text.size();
    std::string entry = text.substr(start, end - start);
    start = end + 1;
    if (auto hash = entry.find('#'); hash != std::string::npos) entry.resize(hash);
    entry = trim(entry);
    if (entry.empty()) continue;
    const auto eq = entry.find('=');
    if (eq == std::string::npos) {
      *err = "'" + entry + "' is not key=value";
      return false;
    }
    const std::string key = trim(entry.substr(0, eq)), value = trim(entry.substr(eq + 1));
    if (key == "device") {
      DeviceSetup d;
      if (!parse_device(value, &d, err)) return false;
      out->devices.push_back(d);
      continue;
    }
    unsigned long long n = 0;
    if (!number(value, &n)) {
      *err = "'" + key + "' needs a number, not '" + value + "'";
      return false;
    }
    fastmap_sim_config& c = out->config;
    if (key == "kernel_version") {
      c.kernel_version = static_cast<int>(n);
    } else if (key == "thp") {
      c.transparent_hugepage = n != 0;
    } else if (key == "iommufd_test") {
      c.iommufd_test = n != 0;
    } else if (key == "memlock") {
      c.rlimit_memlock = n;
    } else if (key == "cap_ipc_lock") {
      c.cap_ipc_lock = n != 0;
    } else if (key == "cap_sys_resource") {
      c.cap_sys_resource = n != 0;
    } else if (key == "dma_entry_limit") {
      c.dma_entry_limit = static_cast<unsigned>(n);
    } else {
      *err = "unknown key '" + key + "'";
      return false;
    }
  }
  return true;
}

}  // namespace fastmap::preload
