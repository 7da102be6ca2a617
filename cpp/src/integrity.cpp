#include "integrity.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <vector>

#include "json.hpp"
#include "torchbridge/runtime.hpp"

namespace torchbridge {

namespace {

using Tables = std::array<std::array<uint32_t, 256>, 8>;

// Slicing-by-8: eight bytes per step, about 1-2 GB/s, so the check stays a small part of a load.
const Tables& crc_tables() {
  static const Tables tables = [] {
    Tables t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (size_t s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
    return t;
  }();
  return tables;
}

uint32_t le32(const unsigned char* p) { return p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24; }
uint16_t le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
uint64_t le64(const unsigned char* p) { return le32(p) | static_cast<uint64_t>(le32(p + 4)) << 32; }



// SHA-256 (FIPS 180-4). The system's libcrypto, when the process can load it, hashes with the
// CPU's SHA extensions (several times faster); this portable version is the fallback and the
// reference the tests compare it with.
class Sha256 {
 public:
  void update(const unsigned char* data, size_t size) {
    length_ += size;
    if (used_ > 0) {
      const size_t take = std::min(size, sizeof(block_) - used_);
      std::memcpy(block_ + used_, data, take);
      used_ += take;
      data += take;
      size -= take;
      if (used_ < sizeof(block_)) return;
      compress(block_);
      used_ = 0;
    }
    for (; size >= 64; data += 64, size -= 64) compress(data);
    std::memcpy(block_, data, size);
    used_ = size;
  }

  std::array<unsigned char, 32> finish() {
    const uint64_t bits = length_ * 8;
    const unsigned char pad = 0x80;
    update(&pad, 1);
    const unsigned char zero = 0;
    while (used_ != 56) update(&zero, 1);
    unsigned char tail[8];
    for (int i = 0; i < 8; ++i) tail[i] = static_cast<unsigned char>(bits >> (56 - 8 * i));
    update(tail, 8);
    std::array<unsigned char, 32> out{};
    for (int i = 0; i < 8; ++i)
      for (int k = 0; k < 4; ++k) out[4 * i + k] = static_cast<unsigned char>(state_[i] >> (24 - 8 * k));
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void compress(const unsigned char* block) {
    static constexpr uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = static_cast<uint32_t>(block[4 * i]) << 24 | block[4 * i + 1] << 16 | block[4 * i + 2] << 8 | block[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
    uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    state_[0] += a;
    state_[1] += b;
    state_[2] += c;
    state_[3] += d;
    state_[4] += e;
    state_[5] += f;
    state_[6] += g;
    state_[7] += h;
  }

  uint32_t state_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  unsigned char block_[64] = {};
  size_t used_ = 0;
  uint64_t length_ = 0;
};

using OneShotSha256 = unsigned char* (*)(const unsigned char*, size_t, unsigned char*);

OneShotSha256 system_sha256() {
  static const OneShotSha256 function = []() -> OneShotSha256 {
    const char* choice = std::getenv("TORCHBRIDGE_SHA256");
    if (choice != nullptr && std::string(choice) == "portable") return nullptr;
    for (const char* name : {"libcrypto.so.3", "libcrypto.so"}) {
      if (void* library = dlopen(name, RTLD_NOW | RTLD_LOCAL)) {
        if (void* symbol = dlsym(library, "SHA256")) return reinterpret_cast<OneShotSha256>(symbol);
      }
    }
    return nullptr;
  }();
  return function;
}

std::string hex(const unsigned char* digest, size_t size) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < size; ++i) {
    out += digits[digest[i] >> 4];
    out += digits[digest[i] & 15];
  }
  return out;
}

[[noreturn]] void damaged(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::kArtifact, path + ": damaged artifact: " + what +
                                        " (the file changed after it was written; export it again or restore a copy)");
}

std::vector<unsigned char> read_at(std::ifstream& file, uint64_t offset, uint64_t size) {
  std::vector<unsigned char> bytes(size);
  file.seekg(static_cast<std::streamoff>(offset));
  file.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(file.gcount()) != size) bytes.clear();
  return bytes;
}

}  // namespace

uint32_t crc32(uint32_t crc, const unsigned char* data, size_t size) {
  const Tables& t = crc_tables();
  crc = ~crc;
  while (size >= 8) {
    uint32_t one, two;
    std::memcpy(&one, data, 4);
    std::memcpy(&two, data + 4, 4);
    one ^= crc;
    crc = t[7][one & 0xFF] ^ t[6][(one >> 8) & 0xFF] ^ t[5][(one >> 16) & 0xFF] ^ t[4][one >> 24] ^
          t[3][two & 0xFF] ^ t[2][(two >> 8) & 0xFF] ^ t[1][(two >> 16) & 0xFF] ^ t[0][two >> 24];
    data += 8;
    size -= 8;
  }
  while (size--) crc = t[0][(crc ^ *data++) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

std::string sha256_hex(const unsigned char* data, size_t size, bool portable) {
  unsigned char digest[32];
  if (const OneShotSha256 fast = portable ? nullptr : system_sha256()) {
    fast(data, size, digest);
    return hex(digest, 32);
  }
  Sha256 hash;
  hash.update(data, size);
  const auto out = hash.finish();
  return hex(out.data(), out.size());
}

bool digest_excluded(const std::string& name) {
  // Written by torch's zip writer itself at the end of every archive (a random id, the format
  // version, the byte order); LibTorch checks the last two, and the CRC-32 covers all three.
  return name == kDigestRecord || name == ".data/serialization_id" || name == ".data/version" || name == "version" ||
         name == "byteorder";
}

void check_archive_integrity(const std::string& path, caffe2::serialize::PyTorchStreamReader& reader,
                             const ZipDirectory& stored) {
  const std::vector<std::string> records = reader.getAllRecords();

  // The digest record binds each record's name to its contents: the CRC-32s travel with the
  // records, so a renamed or swapped record (or an edited manifest) would pass them.
  std::map<std::string, std::string> digests;
  bool has_digests = false;
  if (reader.hasRecord(kDigestRecord)) {
    has_digests = true;
    auto [data, size] = reader.getRecord(kDigestRecord);
    const auto found = stored.find(kDigestRecord);
    if (found == stored.end() || found->second.size != size ||
        (found->second.crc != 0 && crc32(0, static_cast<const unsigned char*>(data.get()), size) != found->second.crc))
      damaged(path, std::string("record '") + kDigestRecord + "' fails its CRC-32 check");
    try {
      const json::Value root = json::parse(std::string(static_cast<const char*>(data.get()), size));
      if (root.at("algorithm").as_string("algorithm") != "sha256")
        throw std::runtime_error("unknown algorithm '" + root.at("algorithm").string + "'");
      const json::Value& listed = root.at("records");
      if (listed.type != json::Value::Type::kObject) throw std::runtime_error("'records' must be an object");
      for (const auto& [name, value] : listed.object) {
        const std::string& digest = value.as_string("records." + name);
        if (digest.size() != 64) throw std::runtime_error("the digest of '" + name + "' is not 64 hex digits");
        digests[name] = digest;
      }
    } catch (const std::exception& error) {
      damaged(path, std::string("record '") + kDigestRecord + "' is unreadable: " + error.what());
    }
    for (const auto& [name, digest] : digests)
      if (!reader.hasRecord(name))
        damaged(path, "record '" + name + "' is missing (renamed or removed; the archive's digests list it)");
  }

  for (const std::string& name : records) {
    const auto found = stored.find(name);
    if (found == stored.end()) damaged(path, "record '" + name + "' is missing from the zip central directory");
    auto [data, size] = reader.getRecord(name);
    if (size != found->second.size)
      damaged(path, "record '" + name + "' holds " + std::to_string(size) + " bytes where the archive says " +
                        std::to_string(found->second.size));
    const auto* bytes = static_cast<const unsigned char*>(data.get());
    if (has_digests && !digest_excluded(name)) {
      const auto listed = digests.find(name);
      if (listed == digests.end())
        damaged(path, "record '" + name + "' is not one the artifact was exported with (renamed or added)");
      if (sha256_hex(bytes, size, false) != listed->second)
        damaged(path, "record '" + name + "' fails its SHA-256 check (its contents differ from what was exported)");
      continue;  // SHA-256 is the stronger check of the two
    }
    // A writer may skip the checksum (torch.serialization.set_crc32_options(False)) and store 0.
    if (found->second.crc == 0 && size > 0) continue;
    const uint32_t actual = crc32(0, bytes, size);
    if (actual != found->second.crc) {
      char message[96];
      std::snprintf(message, sizeof(message), "fails its CRC-32 check (0x%08x where the archive says 0x%08x)", actual,
                    found->second.crc);
      damaged(path, "record '" + name + "' " + message);
    }
  }
}

ZipDirectory read_zip_directory(const std::string& path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  const uint64_t file_size = static_cast<uint64_t>(file.tellg());
  // The end-of-central-directory record: 22 bytes plus a comment of up to 65535.
  const uint64_t tail_size = std::min<uint64_t>(file_size, 22 + 65535);
  const std::vector<unsigned char> tail = read_at(file, file_size - tail_size, tail_size);
  if (tail.size() < 22) damaged(path, "no zip end-of-central-directory record: the file is truncated or not a whole zip archive");
  int64_t end = -1;
  for (int64_t i = static_cast<int64_t>(tail.size()) - 22; i >= 0; --i)
    if (le32(&tail[i]) == 0x06054b50) {
      end = i;
      break;
    }
  if (end < 0) damaged(path, "no zip end-of-central-directory record: the file is truncated or not a whole zip archive");
  if (le16(&tail[end + 4]) != 0 || le16(&tail[end + 6]) != 0 || le16(&tail[end + 8]) != le16(&tail[end + 10]))
    damaged(path, "the zip end-of-central-directory record names another disk (a split archive)");
  uint64_t entries = le16(&tail[end + 10]);
  uint64_t directory_size = le32(&tail[end + 12]);
  uint64_t directory_offset = le32(&tail[end + 16]);
  if (entries == 0xFFFF || directory_size == 0xFFFFFFFF || directory_offset == 0xFFFFFFFF) {
    // Zip64: a locator just before the record points at the 64-bit end record.
    const uint64_t locator = file_size - tail_size + static_cast<uint64_t>(end);
    if (locator < 20) damaged(path, "a zip64 archive without its locator");
    const std::vector<unsigned char> bytes = read_at(file, locator - 20, 20);
    if (bytes.size() != 20 || le32(bytes.data()) != 0x07064b50) damaged(path, "a zip64 archive without its locator");
    const std::vector<unsigned char> record = read_at(file, le64(&bytes[8]), 56);
    if (record.size() != 56 || le32(record.data()) != 0x06064b50) damaged(path, "a damaged zip64 end record");
    entries = le64(&record[32]);
    directory_size = le64(&record[40]);
    directory_offset = le64(&record[48]);
  }
  if (directory_offset > file_size || directory_size > file_size - directory_offset)
    damaged(path, "the zip central directory lies outside the file");
  const std::vector<unsigned char> directory = read_at(file, directory_offset, directory_size);
  if (directory.size() != directory_size) damaged(path, "the zip central directory cannot be read");

  ZipDirectory stored;
  std::string top;  // the archive's top folder, with its slash
  size_t at = 0;
  for (uint64_t n = 0; n < entries; ++n) {
    if (at + 46 > directory.size() || le32(&directory[at]) != 0x02014b50)
      damaged(path, "zip central directory entry " + std::to_string(n) + " is unreadable");
    const size_t name_length = le16(&directory[at + 28]);
    const size_t extra_length = le16(&directory[at + 30]);
    const size_t comment_length = le16(&directory[at + 32]);
    if (at + 46 + name_length + extra_length + comment_length > directory.size())
      damaged(path, "zip central directory entry " + std::to_string(n) + " is unreadable");
    StoredRecord entry;
    entry.crc = le32(&directory[at + 16]);
    uint64_t compressed = le32(&directory[at + 20]);
    entry.size = le32(&directory[at + 24]);
    uint64_t local = le32(&directory[at + 42]);
    // Zip64: the extra field (id 1) holds, in this order, the 64-bit fields whose 32-bit ones are full.
    for (size_t e = at + 46 + name_length; e + 4 <= at + 46 + name_length + extra_length;) {
      const uint16_t id = le16(&directory[e]);
      const uint16_t length = le16(&directory[e + 2]);
      if (id == 1) {
        size_t field = e + 4;
        const size_t field_end = std::min<size_t>(e + 4 + length, directory.size());
        for (uint64_t* value : {&entry.size, &compressed, &local}) {
          if (*value != 0xFFFFFFFF) continue;
          if (field + 8 > field_end) break;
          *value = le64(&directory[field]);
          field += 8;
        }
      }
      e += 4 + length;
    }
    std::string name(reinterpret_cast<const char*>(&directory[at + 46]), name_length);
    const bool stored_plain = le16(&directory[at + 10]) == 0;  // method 0: stored, as torch writes
    if (le16(&directory[at + 34]) != 0 || (le16(&directory[at + 8]) & 1) != 0 ||
        (stored_plain && compressed != entry.size) || (entry.size != 0 && compressed == 0))
      damaged(path, "zip central directory entry " + std::to_string(n) + " ('" + name.substr(0, 80) +
                        "') is damaged (its disk, flags or sizes)");
    // Its local header, which the reader follows to the data: where the directory says, with the
    // same name, and its data before the directory.
    const std::vector<unsigned char> header = read_at(file, local, 30);
    if (local > directory_offset || header.size() != 30 || le32(header.data()) != 0x04034b50 ||
        le16(&header[26]) != name_length)
      damaged(path, "the local zip header of '" + name.substr(0, 80) + "' is damaged");
    const uint64_t data_start = local + 30 + name_length + le16(&header[28]);
    if (data_start > directory_offset || compressed > directory_offset - data_start ||
        read_at(file, local + 30, name_length) != std::vector<unsigned char>(name.begin(), name.end()))
      damaged(path, "the local zip header of '" + name.substr(0, 80) + "' is damaged");
    const size_t slash = name.find('/');
    if (slash == std::string::npos || slash == 0 || (n > 0 && name.compare(0, slash + 1, top) != 0))
      damaged(path, "zip entry " + std::to_string(n) + " ('" + name.substr(0, 80) +
                        "') lies outside the archive's top folder");
    if (n == 0) top = name.substr(0, slash + 1);
    name = name.substr(slash + 1);
    if (stored.count(name)) damaged(path, "record '" + name + "' appears twice in the zip central directory");
    stored[name] = entry;
    at += 46 + name_length + extra_length + comment_length;
  }
  return stored;
}

}  // namespace torchbridge
