import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The client's output: lines to stdout (written at once, never buffered, so that a pipe or a
/// file sees them as they happen), errors to stderr, and on a terminal one status line that is
/// redrawn in place and cleared before anything else is written.
///
/// Colours are used only when stdout is a terminal and `NO_COLOR` is unset or empty.
final class Console: Sendable {
    /// stdout is a terminal (`isatty(1)`).
    let isTerminal: Bool
    /// ANSI colours and styles are on.
    let colors: Bool
    private let statusShown = Mutex(false)
    /// While a question is asked inline, the status line stays away from it.
    private let statusPaused = Mutex(false)

    init(isTerminal: Bool = isatty(STDOUT_FILENO) == 1, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.isTerminal = isTerminal
        let noColor = environment["NO_COLOR"].map { !$0.isEmpty } ?? false
        self.colors = isTerminal && !noColor
    }

    static let shared = Console()

    // MARK: Writing

    /// Writes `text` and a newline to stdout (clearing the status line first).
    func line(_ text: String = "") {
        write(text + "\n", to: STDOUT_FILENO)
    }

    /// Writes `text` and a newline to stderr (clearing the status line first).
    func error(_ text: String) {
        write(text + "\n", to: STDERR_FILENO)
    }

    /// Shows `text` as the status line (terminal only; cut to the terminal's width).
    func status(_ text: String) {
        guard isTerminal, !statusPaused.withLock({ $0 }) else { return }
        let width = max(20, Self.terminalWidth() - 1)
        let cut = text.count > width ? String(text.prefix(width - 1)) + "…" : text
        statusShown.withLock { shown in
            Self.writeAll("\r\u{1B}[2K" + paint(cut, .dim), to: STDOUT_FILENO)
            shown = true
        }
    }

    /// Asks: `text` without a newline, the status line cleared and kept away until `endPrompt`.
    func prompt(_ text: String) {
        statusPaused.withLock { $0 = true }
        write(text, to: STDOUT_FILENO)
    }

    func endPrompt() {
        statusPaused.withLock { $0 = false }
    }

    /// Removes the status line, if one is shown.
    func clearStatus() {
        statusShown.withLock { shown in
            if shown { Self.writeAll("\r\u{1B}[2K", to: STDOUT_FILENO) }
            shown = false
        }
    }

    private func write(_ text: String, to descriptor: Int32) {
        statusShown.withLock { shown in
            if shown { Self.writeAll("\r\u{1B}[2K", to: STDOUT_FILENO) }
            shown = false
            Self.writeAll(text, to: descriptor)
        }
    }

    private static func writeAll(_ text: String, to descriptor: Int32) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeMutableBytes { buffer in
                systemWrite(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += written
        }
        bytes.removeAll()
    }

    static func terminalWidth() -> Int {
        var size = winsize()
        if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        return 80
    }

    // MARK: Styles

    enum Style: String {
        case bold = "1", dim = "2", red = "31", green = "32", yellow = "33", blue = "34", magenta = "35", cyan = "36"
    }

    /// `text` in `style`, or plain when colours are off.
    func paint(_ text: String, _ styles: Style...) -> String {
        guard colors, !styles.isEmpty, !text.isEmpty else { return text }
        return "\u{1B}[" + styles.map(\.rawValue).joined(separator: ";") + "m" + text + "\u{1B}[0m"
    }
}

/// `write(2)`, named apart from `Console`'s own methods.
private func systemWrite(_ descriptor: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
    write(descriptor, bytes, count)
}
