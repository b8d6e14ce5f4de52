import ArgumentParser
import CloudAgentCore
import Foundation
import Synchronization

/// The client commands' exit codes (also in `cloud-agent --help`).
enum ExitStatus {
    /// Success; for `run`, `send --wait` and `stream --until-end`: the execution completed.
    static let success: Int32 = 0
    /// The execution failed (or the session was deleted while it was followed).
    static let executionFailed: Int32 = 1
    /// A usage error, or the API refused the request (4xx).
    static let usage: Int32 = 2
    /// The server could not be reached (connection refused, timeout, dropped for too long).
    static let connection: Int32 = 3
    /// The server failed the request (5xx, e.g. 503 RUNTIME_UNAVAILABLE).
    static let server: Int32 = 4
    /// The execution was interrupted, or the client was stopped with Ctrl-C.
    static let interrupted: Int32 = 130

    static let summary = """
        Exit codes: 0 success (for run, send --wait, stream --until-end: the execution completed); \
        1 the execution failed; 2 usage error or the API refused the request (4xx); \
        3 the server could not be reached; 4 the server failed (5xx); \
        130 the execution was interrupted, or Ctrl-C.
        """
}

/// A failure the client reports on stderr before exiting with `exitCode`.
struct CLIFailure: Error, CustomStringConvertible {
    var message: String
    var exitCode: Int32
    /// Lines shown under the message (an API error's extra fields).
    var details: [String] = []

    var description: String { ([message] + details).joined(separator: "\n  ") }

    static func usage(_ message: String) -> CLIFailure { CLIFailure(message: message, exitCode: ExitStatus.usage) }

    /// An API error answer: `error.message (CODE, HTTP status)` and its extra fields.
    static func api(status: Int, body: JSONValue?, text: String) -> CLIFailure {
        let error = body?.objectValue?["error"]?.objectValue
        let code = error?["code"]?.stringValue
        let message = error?["message"]?.stringValue ?? (text.isEmpty ? "HTTP \(status)" : String(text.prefix(500)))
        var details: [String] = []
        for (key, value) in (error ?? [:]).sorted(by: { $0.key < $1.key }) where key != "code" && key != "message" {
            let shown = (value.stringValue ?? JSONText.encode(value)).trimmingCharacters(in: .whitespacesAndNewlines)
            if !shown.isEmpty { details.append("\(key): \(shown)") }
        }
        let suffix = code.map { "\($0), HTTP \(status)" } ?? "HTTP \(status)"
        return CLIFailure(
            message: "\(message) (\(suffix))", exitCode: status >= 500 ? ExitStatus.server : ExitStatus.usage, details: details
        )
    }

    static func connection(_ url: String, _ error: any Error) -> CLIFailure {
        let text = "\(error)"
        let reason =
            if text.contains("Connection refused") {
                "connection refused; is `cloud-agent serve` running there? (--url, CLOUD_AGENT_URL)"
            } else if text.lowercased().contains("timeout") || text.lowercased().contains("timed out") {
                "timed out (\(text))"
            } else {
                text
            }
        return CLIFailure(message: "cannot reach the cloud-agent server at \(url): \(reason)", exitCode: ExitStatus.connection)
    }
}

extension JSONValue {
    var arrayItems: [JSONValue] { if case .array(let items) = self { items } else { [] } }

    var dateValue: Date? { stringValue.flatMap(Timestamp.parse) }
}

/// The options every client command takes: where the server is, the token, `--json`.
struct ClientOptions: ParsableArguments {
    @Option(help: "The server's URL (CLOUD_AGENT_URL, default http://127.0.0.1:8787).")
    var url: String?

    @Option(
        help: ArgumentHelp(
            "The bearer token (CLOUD_AGENT_TOKEN; default the api-token file in the data dir).",
            valueName: "token"
        ))
    var token: String?

    @Option(
        name: .customLong("data-dir"), help: "Where a local server keeps api-token, read when no token is given (CLOUD_AGENT_DATA_DIR, default ./.cloud-agent)."
    )
    var dataDir: String?

    @Flag(help: "Machine output: raw JSON responses and events, one per line.")
    var json = false

    static let defaultURL = "http://127.0.0.1:8787"

    /// The API client for the resolved URL and token.
    func client(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> APIClient {
        let rawURL = url ?? environment["CLOUD_AGENT_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? Self.defaultURL
        var base = rawURL.trimmingCharacters(in: .whitespaces)
        while base.hasSuffix("/") { base.removeLast() }
        guard let parsed = URL(string: base), let scheme = parsed.scheme?.lowercased(), scheme == "http" || scheme == "https",
            parsed.host != nil
        else {
            throw CLIFailure.usage("--url must be an http:// or https:// URL: \(rawURL)")
        }
        return APIClient(baseURL: base, token: try resolveToken(environment: environment))
    }

    func resolveToken(environment: [String: String]) throws -> String {
        if let token, !token.isEmpty { return token }
        if let token = environment["CLOUD_AGENT_TOKEN"], !token.isEmpty { return token }
        let directory = dataDir ?? environment["CLOUD_AGENT_DATA_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? ".cloud-agent"
        let file = URL(fileURLWithPath: directory).appendingPathComponent("api-token")
        if let text = try? String(contentsOf: file, encoding: .utf8) {
            let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if !token.isEmpty { return token }
        }
        throw CLIFailure.usage(
            "no API token: pass --token, set CLOUD_AGENT_TOKEN, or run where the server's data dir is (\(file.path) was not readable)"
        )
    }
}

/// Reads a prompt argument: `-` means stdin.
func readPrompt(_ argument: String) throws -> String {
    let prompt: String
    if argument == "-" {
        let data = FileHandle.standardInput.readDataToEndOfFile()
        prompt = String(decoding: data, as: UTF8.self)
    } else {
        prompt = argument
    }
    guard !prompt.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw CLIFailure.usage("the prompt is empty") }
    return prompt
}

/// `NAME=VALUE` pairs of repeated options; a bare `NAME` takes its value from the client's
/// environment (so that a secret need not appear on the command line).
func parsePairs(_ items: [String], option: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> [String: String] {
    var pairs: [String: String] = [:]
    for item in items {
        let name: String
        let value: String
        if let equals = item.firstIndex(of: "=") {
            name = String(item[..<equals])
            value = String(item[item.index(after: equals)...])
        } else {
            name = item
            guard let fromEnvironment = environment[item] else {
                throw CLIFailure.usage("\(option) \(item): no =VALUE and no environment variable \(item) to take it from")
            }
            value = fromEnvironment
        }
        guard !name.isEmpty else { throw CLIFailure.usage("\(option) \(item): expected NAME=VALUE") }
        guard pairs[name] == nil else { throw CLIFailure.usage("\(option) \(name) is given twice") }
        pairs[name] = value
    }
    return pairs
}

/// A duration option (`250ms`, `30s`, `15m`, `2h`, `90d`) in milliseconds.
func parseDuration(_ text: String, option: String) throws -> Int64 {
    do { return try DurationText.milliseconds(text) } catch { throw CLIFailure.usage("\(option): \(error.description)") }
}

/// Formats a duration in seconds for people: `850ms`, `4.2s`, `3m 05s`, `2h 10m`.
func humanDuration(_ seconds: Double) -> String {
    let seconds = max(0, seconds)
    if seconds < 1 { return "\(Int((seconds * 1000).rounded()))ms" }
    if seconds < 60 { return String(format: seconds < 10 ? "%.1fs" : "%.0fs", seconds) }
    let whole = Int(seconds.rounded())
    if whole < 3600 { return String(format: "%dm %02ds", whole / 60, whole % 60) }
    return String(format: "%dh %02dm", whole / 3600, (whole % 3600) / 60)
}

/// Formats a timestamp in local time for people: `14:03:07.123` today, else with the date.
func humanTime(_ date: Date?) -> String {
    guard let date else { return "—" }
    let formatter = DateFormatter()
    formatter.locale = Locale(identifier: "en_US_POSIX")
    formatter.dateFormat = Calendar.current.isDateInToday(date) ? "HH:mm:ss.SSS" : "yyyy-MM-dd HH:mm:ss"
    return formatter.string(from: date)
}

/// A value shared between tasks, behind a lock (a class, so that closures can capture it).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) { mutex = Mutex(value) }

    var value: Value { mutex.withLock { $0 } }

    @discardableResult
    func withLock<Result: Sendable>(_ body: (inout Value) -> Result) -> Result { mutex.withLock { body(&$0) } }
}
