import Foundation

/// A session's runtime log (`<data>/runtimes/<sessionId>.log`): the runtime's own lines —
/// connects, reconnects with their reasons, agent launches and exits, signals — appended by the
/// runtime process. Bounded at each launch (the oldest part dropped), read from its end.
public enum RuntimeLogFile {
    /// A log over this size is cut to its last `keptBytes` before a launch appends to it.
    public static let maxBytes = 1 << 20
    public static let keptBytes = 512 << 10

    /// Cuts the log to its last `keptBytes` (from a line's start) when it is over `maxBytes`.
    public static func bound(_ url: URL, maxBytes: Int = maxBytes, keptBytes: Int = keptBytes) {
        guard let size = (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) ?? nil, size > maxBytes,
            let handle = try? FileHandle(forReadingFrom: url)
        else { return }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: UInt64(size - keptBytes))) != nil, let tail = try? handle.readToEnd() else { return }
        // From the first whole line on.
        let start = tail.firstIndex(of: UInt8(ascii: "\n")).map { tail.index(after: $0) } ?? tail.startIndex
        let marker = Data("… (older lines dropped: the log keeps its last \(keptBytes / 1024) KiB)\n".utf8)
        try? (marker + tail[start...]).write(to: url, options: .atomic)
        try? FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: url.path)
    }

    /// The last `lines` lines of the log; nil when there is none.
    public static func tail(_ url: URL, lines: Int) -> String? {
        guard let handle = try? FileHandle(forReadingFrom: url) else { return nil }
        defer { try? handle.close() }
        guard let size = try? handle.seekToEnd() else { return nil }
        // At most twice the bound: a log is cut at each launch, but a long run may have grown it.
        let window = UInt64(2 * maxBytes)
        let start = size > window ? size - window : 0
        guard (try? handle.seek(toOffset: start)) != nil, let data = try? handle.readToEnd() else { return nil }
        var text = String(decoding: data, as: UTF8.self)
        if start > 0, let newline = text.firstIndex(of: "\n") { text = String(text[text.index(after: newline)...]) }
        var all = text.split(separator: "\n", omittingEmptySubsequences: false)
        if all.last == "" { all.removeLast() }
        return all.suffix(max(0, lines)).map { $0 + "\n" }.joined()
    }
}
