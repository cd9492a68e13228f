// What backs a range of process memory, for choosing IOPTE sizes.
//
// The kernel maps physically contiguous runs of pinned pages with the largest IOPTEs their
// alignment allows, so large IOPTEs appear only for memory in huge pages (hugetlbfs, or THP
// where the mapping allows it). The simulator's "physical" address is the process VA, which
// is always contiguous, so iommufd asks here how large a contiguous page the memory may
// really be in, and caps the IOPTE size at that.
#pragma once

#include <cstdint>

namespace fastmap::sim {

// The largest page size every page of [va, va+len) can be in: the hugetlb page size for
// hugetlbfs mappings, HPAGE_SIZE for mappings eligible for transparent hugepages (when
// `thp` is configured), else PAGE_SIZE. Read from /proc/self/smaps; PAGE_SIZE when unsure.
std::uint64_t backing_page_size(std::uint64_t va, std::uint64_t len, bool thp) noexcept;

}  // namespace fastmap::sim
