// The integrity check every artifact passes at load: each record of the zip archive must match the
// CRC-32 the archive stores for it. LibTorch's reader does not check these, so a flipped byte in a
// weight would otherwise load and give a wrong answer. Artifacts torchbridge exported also carry the
// SHA-256 of every record (extra/torchbridge/digests.json), which the check verifies instead: that
// also catches records renamed or swapped and an edited manifest, whose CRC-32s stay valid.
#pragma once

#include <caffe2/serialize/inline_container.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace torchbridge {

/// CRC-32 (the zip polynomial) of `size` bytes, continuing from `crc` (0 to start).
uint32_t crc32(uint32_t crc, const unsigned char* data, size_t size);

/// The record holding the SHA-256 of every other record, written by torchbridge's export.
constexpr char kDigestRecord[] = "extra/torchbridge/digests.json";

/// SHA-256 of `size` bytes as 64 hex digits (`portable`: without the system's libcrypto).
std::string sha256_hex(const unsigned char* data, size_t size, bool portable = false);

/// Throws Error(kArtifact) naming the first record of the archive at `path` whose bytes do not match
/// its stored CRC-32 or size, or a central directory that cannot be read.
void check_archive_integrity(const std::string& path, caffe2::serialize::PyTorchStreamReader& reader);

}  // namespace torchbridge
