import ArgumentParser
import CloudAgentCore
import CloudAgentEngine
import Foundation
import NIOHTTP1

/// `cloud-agent logs`: the session's runtime log (its last lines; `-f` follows it).
struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs",
        abstract: "Print a session's runtime log: connects, reconnects, agent launches and exits, signals (-f follows it).",
        discussion: ExitStatus.summary
    )

    @OptionGroup var client: ClientOptions
    @Argument(help: "The session id (agent_…).") var id: String
    @Option(help: "How many of the last lines (1–10000, default 200).") var tail: Int = SessionService.defaultLogLines
    @Flag(name: [.customShort("f"), .long], help: "Keep printing new lines until Ctrl-C.") var follow = false

    func validate() throws {
        guard (1...SessionService.maxLogLines).contains(tail) else { throw ValidationError("--tail must be from 1 to \(SessionService.maxLogLines)") }
    }

    func run() async throws {
        let api = try client.client()
        let console = Console.shared
        let path = "/v1/sessions/\(APIClient.escape(id))/logs"
        var shown = try await api.send(.GET, path + "?tail=\(tail)").text
        Self.print(shown, on: console)
        guard follow else { return }
        // Every second, the same window of last lines: what is new is printed (more than
        // --tail new lines in one second would be cut to the last --tail).
        while !Task.isCancelled {
            try await Task.sleep(for: .seconds(1))
            let latest = try await api.send(.GET, path + "?tail=\(tail)").text
            Self.print(Self.newLines(shown: shown, latest: latest), on: console)
            shown = latest
        }
    }

    private static func print(_ text: String, on console: Console) {
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast(text.hasSuffix("\n") ? 1 : 0) { console.line(String(line)) }
    }

    /// The lines of `latest` after those already `shown`, two windows of the log's last lines:
    /// after the longest end of `shown` that `latest` starts with (the log only grows, or was cut
    /// at its start when a runtime launched).
    static func newLines(shown: String, latest: String) -> String {
        func lines(_ text: String) -> [Substring] {
            var all = text.split(separator: "\n", omittingEmptySubsequences: false)
            if all.last == "" { all.removeLast() }
            return all
        }
        let old = lines(shown)
        let now = lines(latest)
        var fresh = now
        for count in stride(from: min(old.count, now.count), through: 1, by: -1) where Array(old.suffix(count)) == Array(now.prefix(count)) {
            fresh = Array(now.dropFirst(count))
            break
        }
        return fresh.map { $0 + "\n" }.joined()
    }
}
