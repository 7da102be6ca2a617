// The integrity check every artifact passes at load: each record of the zip archive must match the
// CRC-32 the archive stores for it. LibTorch's reader does not check these, so a flipped byte in a
// weight would otherwise load and give a wrong answer. Artifacts torchbridge exported also carry the
// SHA-256 of every record (extra/torchbridge/digests.json), which the check verifies instead: that
// also catches records renamed or swapped and an edited manifest, whose CRC-32s stay valid.
#pragma once

#include <caffe2/serialize/inline_container.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace torchbridge {

/// CRC-32 (the zip polynomial) of `size` bytes, continuing from `crc` (0 to start).
uint32_t crc32(uint32_t crc, const unsigned char* data, size_t size);

/// The record holding the SHA-256 of every other record, written by torchbridge's export.
constexpr char kDigestRecord[] = "extra/torchbridge/digests.json";

/// SHA-256 of `size` bytes as 64 hex digits (`portable`: without the system's libcrypto).
std::string sha256_hex(const unsigned char* data, size_t size, bool portable = false);

struct StoredRecord {
  uint32_t crc = 0;
  uint64_t size = 0;  // uncompressed
};
/// Record name (without the archive's top folder, as PyTorchStreamReader names it) -> what the zip stores.
using ZipDirectory = std::map<std::string, StoredRecord>;

/// The zip's central directory, read before LibTorch's reader sees the file, so that a damaged end
/// record or directory is refused in torchbridge's words: Error(kArtifact) "<path>: damaged artifact:
/// ..." for a missing or split end record, a directory outside the file or unreadable, an entry
/// outside the archive's top folder, a record listed twice, an entry whose disk, flags or sizes
/// disagree, a local header missing, misplaced or naming another record.
ZipDirectory read_zip_directory(const std::string& path);

/// Throws Error(kArtifact) naming the first record of the archive at `path` whose bytes do not match
/// its SHA-256 digest (when the archive carries them) or its stored CRC-32 or size.
void check_archive_integrity(const std::string& path, caffe2::serialize::PyTorchStreamReader& reader,
                             const ZipDirectory& directory);

}  // namespace torchbridge
