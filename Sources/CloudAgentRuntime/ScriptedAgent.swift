import CloudAgentJSON
import Foundation
import Subprocess
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The built-in `scripted` agent: a real agent program for offline use, demos and tests.
///
/// It reads its prompt line by line and acts on each, writing one JSON object per line:
/// - `say TEXT` → `{"type":"text","text":TEXT}`
/// - `sleep SECONDS` → nothing at all, for SECONDS (fractional allowed)
/// - `tick N SECONDS` → N × `{"type":"text","text":"tick i/N"}`, SECONDS apart
/// - `write PATH TEXT` → TEXT and a newline into PATH inside the workspace (parents created) →
///   `{"type":"tool","name":"write","input":PATH,"status":"ok","output":"wrote N bytes"}`; a path
///   that escapes the workspace → `{"type":"error","message":"write: path escapes the workspace: PATH"}`
/// - `run COMMAND` → `/bin/sh -c COMMAND` in the workspace → `{"type":"tool","name":"run",
///   "input":COMMAND,"exitCode":N,"status":"ok"|"error","output":<last 4000 characters>}`
/// - `exit CODE` → stop at once with that exit code
/// - `ask QUESTION` → `{"type":"input_request","requestId":…,"kind":"question","question":QUESTION}`,
///   then waits for the answer → `{"type":"text","text":"answer: TEXT"}` (an object answer as its
///   JSON text); declined or timed out → `{"type":"text","text":"no answer: DECISION"}`; cancelled
///   (its execution is being stopped) or stdin's end → the agent stops at once (exit 130)
/// - `approve COMMAND` → `{"type":"input_request","requestId":…,"kind":"permission","tool":"run",
///   "input":{"command":COMMAND},"options":[allow once, always allow, deny]}`, then waits: allowed →
///   runs it as `run` does; denied or timed out → `{"type":"text","text":"denied: COMMAND"}`
/// - `usage IN OUT COST` → the execution's usage so far, IN and OUT tokens and COST US dollars
///   more than before: `{"type":"usage","inputTokens":…,"outputTokens":…,"costUsd":…}` (cumulative)
/// - a blank line is skipped; any other line is echoed as a text event.
/// Without anyone to ask (`asker` nil: not run by a runtime), `ask` is an error event and
/// `approve` is denied.
/// Bad arguments give an error event and the script goes on. At the end it exits 0.
public struct ScriptedAgent: Sendable {
    /// One line of the agent's output.
    public enum Event: Sendable, Equatable {
        case text(String)
        case tool(name: String, input: String, status: String, output: String, exitCode: Int32?)
        case error(String)
        /// An input request (the agent waits for its answer on stdin).
        case inputRequest([String: JSONValue])
        /// The usage so far (cumulative): input and output tokens, and cost in US dollars.
        case usage(inputTokens: Int64, outputTokens: Int64, costUsd: Double)

        /// The JSON object, `type` first.
        public var jsonLine: String {
            switch self {
            case .inputRequest(let fields):
                return #"{"type":"input_request","# + String(JSONText.encode(.object(fields)).dropFirst())
            case .text(let text):
                return #"{"type":"text","text":\#(JSONText.encode(.string(text)))}"#
            case .usage(let input, let output, let cost):
                return JSONText.encode([
                    "type": "usage", "inputTokens": .number(Double(input)), "outputTokens": .number(Double(output)), "costUsd": .number(cost),
                ])
            case .error(let message):
                return #"{"type":"error","message":\#(JSONText.encode(.string(message)))}"#
            case .tool(let name, let input, let status, let output, let exitCode):
                var fields = [#""type":"tool""#, #""name":\#(JSONText.encode(.string(name)))"#, #""input":\#(JSONText.encode(.string(input)))"#]
                if let exitCode { fields.append(#""exitCode":\#(exitCode)"#) }
                fields.append(#""status":\#(JSONText.encode(.string(status)))"#)
                fields.append(#""output":\#(JSONText.encode(.string(output)))"#)
                return "{" + fields.joined(separator: ",") + "}"
            }
        }
    }

    /// The exit code when a request is cancelled (its execution is being stopped): 128 + SIGINT.
    public static let cancelledExitCode: Int32 = 130

    /// The longest `run` output kept, in characters (the end of it).
    public static let runOutputLimit = 4000

    /// The agent's working directory, which `write` may not leave.
    public var workspace: String
    /// Writes one output line (flushed at once).
    public var emit: @Sendable (Event) -> Void
    /// Asks (emits the request) and waits for the answer; nil when nobody can answer.
    public var asker: (@Sendable (_ requestId: String, _ request: [String: JSONValue]) async -> ScriptedAnswer?)?

    /// The answer to one of the agent's requests, as its stdin gives it.
    public struct ScriptedAnswer: Sendable, Equatable {
        public var decision: String
        public var optionId: String?
        public var answer: JSONValue?

        public init(decision: String, optionId: String? = nil, answer: JSONValue? = nil) {
            self.decision = decision
            self.optionId = optionId
            self.answer = answer
        }
    }

    public init(
        workspace: String, emit: @escaping @Sendable (Event) -> Void,
        asker: (@Sendable (_ requestId: String, _ request: [String: JSONValue]) async -> ScriptedAnswer?)? = nil
    ) {
        self.workspace = workspace
        self.emit = emit
        self.asker = asker
    }

    /// Runs the script; returns the exit code (0, or the code of an `exit` line).
    public func run(prompt: String) async -> Int32 {
        var asked = 0
        var used = (input: Int64(0), output: Int64(0), cost: 0.0)
        // "\r\n" is one Character, so it is a separator of its own.
        for rawLine in prompt.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            let line = String(rawLine)
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            let verb = String(trimmed.prefix { !$0.isWhitespace })
            let rest = String(trimmed.dropFirst(verb.count).drop { $0.isWhitespace })
            switch verb {
            case "say":
                emit(.text(rest))
            case "sleep":
                guard let seconds = Self.seconds(rest) else {
                    emit(.error("sleep: SECONDS must be a non-negative number: \(rest)"))
                    continue
                }
                try? await Task.sleep(for: .seconds(seconds))
            case "tick":
                await tick(rest)
            case "write":
                write(rest)
            case "run":
                await runCommand(rest)
            case "ask":
                guard !rest.isEmpty else {
                    emit(.error("ask: expected QUESTION"))
                    continue
                }
                guard let asker else {
                    emit(.error("ask: no one to ask (the agent was not started by a runtime)"))
                    continue
                }
                asked += 1
                let requestId = "q\(asked)"
                let answer = await asker(requestId, ["requestId": .string(requestId), "kind": "question", "question": .string(rest)])
                // Cancelled (the execution is being stopped), or no one left to answer: stop here.
                guard let answer, answer.decision != "cancelled" else { return Self.cancelledExitCode }
                switch answer.decision {
                case "answer":
                    let value = answer.answer ?? .null
                    emit(.text("answer: \(value.stringValue ?? JSONText.encode(value))"))
                default:
                    emit(.text("no answer: \(answer.decision)"))
                }
            case "approve":
                guard !rest.isEmpty else {
                    emit(.error("approve: expected COMMAND"))
                    continue
                }
                asked += 1
                let requestId = "p\(asked)"
                let options: JSONValue = [
                    ["id": "allow", "name": "Allow", "kind": "allow_once"],
                    ["id": "allow-always", "name": "Always allow", "kind": "allow_always"],
                    ["id": "deny", "name": "Deny", "kind": "reject_once"],
                ]
                let answer = await asker?(
                    requestId,
                    ["requestId": .string(requestId), "kind": "permission", "tool": "run", "input": ["command": .string(rest)], "options": options]
                )
                if asker != nil, answer == nil || answer?.decision == "cancelled" { return Self.cancelledExitCode }
                if answer?.decision == "allow" {
                    await runCommand(rest)
                } else {
                    emit(.text("denied: \(rest)"))
                }
            case "usage":
                let parts = rest.split(whereSeparator: \.isWhitespace)
                guard parts.count == 3, let input = Int64(parts[0]), input >= 0, let output = Int64(parts[1]), output >= 0,
                    let cost = Double(parts[2]), cost.isFinite, cost >= 0
                else {
                    emit(.error("usage: expected IN OUT COST (whole token counts and a cost in US dollars): \(rest)"))
                    continue
                }
                used = (used.input + input, used.output + output, used.cost + cost)
                emit(.usage(inputTokens: used.input, outputTokens: used.output, costUsd: used.cost))
            case "exit":
                guard let code = Int32(rest), (0...255).contains(code) else {
                    emit(.error("exit: CODE must be a whole number from 0 to 255: \(rest)"))
                    continue
                }
                return code
            default:
                emit(.text(line))
            }
        }
        return 0
    }

    /// A non-negative number of seconds (at most 10⁹, so that a `Duration` holds it).
    private static func seconds(_ text: String) -> Double? {
        guard let seconds = Double(text), seconds >= 0, seconds <= 1e9 else { return nil }
        return seconds
    }

    private func tick(_ arguments: String) async {
        let parts = arguments.split(whereSeparator: \.isWhitespace)
        guard parts.count == 2, let count = Int(parts[0]), count >= 0, let seconds = Self.seconds(String(parts[1])) else {
            emit(.error("tick: expected N SECONDS (a whole number and a non-negative number): \(arguments)"))
            return
        }
        guard count > 0 else { return }
        for index in 1...count {
            if index > 1 { try? await Task.sleep(for: .seconds(seconds)) }
            emit(.text("tick \(index)/\(count)"))
        }
    }

    private func write(_ arguments: String) {
        let path = String(arguments.prefix { !$0.isWhitespace })
        guard !path.isEmpty else {
            emit(.error("write: expected PATH TEXT"))
            return
        }
        let text = String(arguments.dropFirst(path.count).drop { $0.isWhitespace })
        let target: String
        do {
            target = try WorkspacePath.resolve(path, in: workspace)
        } catch WorkspacePath.Failure.escapes {
            emit(.error("write: path escapes the workspace: \(path)"))
            return
        } catch {
            emit(.error("write: \(path): \(error)"))
            return
        }
        let contents = Data((text + "\n").utf8)
        do {
            let parent = (target as NSString).deletingLastPathComponent
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
            try contents.write(to: URL(fileURLWithPath: target))
        } catch {
            emit(.error("write: \(path): \(error.localizedDescription)"))
            return
        }
        emit(.tool(name: "write", input: path, status: "ok", output: "wrote \(contents.count) bytes", exitCode: nil))
    }

    private func runCommand(_ command: String) async {
        guard !command.isEmpty else {
            emit(.error("run: expected COMMAND"))
            return
        }
        do {
            let result = try await Subprocess.run(
                .path("/bin/sh"),
                arguments: ["-c", command],
                workingDirectory: FilePath(workspace),
                input: .none,
                output: .sequence,
                error: .combinedWithOutput
            ) { execution in
                // Keep only the end: enough bytes for `runOutputLimit` characters of any width.
                var tail: [UInt8] = []
                let keep = Self.runOutputLimit * 8
                do {
                    for try await buffer in execution.standardOutput {
                        tail.append(contentsOf: buffer.withUnsafeBytes { Array($0) })
                        if tail.count > 2 * keep { tail.removeFirst(tail.count - keep) }
                    }
                } catch {
                    // Output that cannot be read further: report what arrived.
                }
                return tail
            }
            let exitCode: Int32
            switch result.terminationStatus {
            case .exited(let code): exitCode = code
            case .signaled(let signal): exitCode = 128 + signal
            }
            let output = String(String(decoding: result.closureResult, as: UTF8.self).suffix(Self.runOutputLimit))
            emit(.tool(name: "run", input: command, status: exitCode == 0 ? "ok" : "error", output: output, exitCode: exitCode))
        } catch {
            emit(.error("run: could not start /bin/sh: \(error)"))
        }
    }

    /// Asks through stdout and stdin: each request is an `input_request` line, and its answer a
    /// JSON line on stdin (`{requestId, decision, optionId?, answer?}`, read by `lines`). Lines for
    /// other requests are skipped; stdin's end is a cancellation.
    public static func standardInputAsker(
        emit: @escaping @Sendable (Event) -> Void, lines: ScriptedAnswerLines
    ) -> @Sendable (String, [String: JSONValue]) async -> ScriptedAnswer? {
        { requestId, request in
            emit(.inputRequest(request))
            while let line = await lines.next() {
                guard case .object(let object)? = try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8)),
                    object["requestId"]?.stringValue == requestId, let decision = object["decision"]?.stringValue
                else { continue }
                return ScriptedAnswer(decision: decision, optionId: object["optionId"]?.stringValue, answer: object["answer"])
            }
            return nil
        }
    }

    /// Writes events to this process's stdout, one line per `write(2)`, so each line leaves
    /// the process as soon as it is made.
    public static func standardOutputEmitter() -> @Sendable (Event) -> Void {
        { event in writeToStandardOutput(Array((event.jsonLine + "\n").utf8)) }
    }
}

private func writeToStandardOutput(_ bytes: [UInt8]) {
    var written = 0
    while written < bytes.count {
        let result = bytes[written...].withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
        if result < 0 {
            if errno == EINTR { continue }
            return
        }
        written += result
    }
}

/// Where a path given to the scripted agent's `write` lands, resolved the way the kernel would
/// (`..` and every symbolic link on the way followed), and refused if that is outside the
/// workspace.
enum WorkspacePath {
    enum Failure: Error, CustomStringConvertible {
        case escapes
        case notAFile
        case tooManyLinks

        var description: String {
            switch self {
            case .escapes: "path escapes the workspace"
            case .notAFile: "not a file path"
            case .tooManyLinks: "too many levels of symbolic links"
            }
        }
    }

    /// The physical path to write `path` (relative to the workspace, or absolute) to.
    static func resolve(_ path: String, in workspace: String) throws(Failure) -> String {
        let root = realPath(workspace) ?? workspace
        let resolved = try physicalPath(path, from: root, linksLeft: 40)
        guard resolved.hasPrefix(root == "/" ? "/" : root + "/"), resolved != root else {
            throw resolved == root ? Failure.notAFile : Failure.escapes
        }
        if path.hasSuffix("/") { throw Failure.notAFile }
        return resolved
    }

    private static func physicalPath(_ path: String, from base: String, linksLeft: Int) throws(Failure) -> String {
        guard linksLeft > 0 else { throw Failure.tooManyLinks }
        var current = path.hasPrefix("/") ? "/" : base
        var onDisk = true
        let components = path.split(separator: "/").map(String.init)
        for (index, component) in components.enumerated() {
            switch component {
            case ".":
                continue
            case "..":
                current = (current as NSString).deletingLastPathComponent
                if current.isEmpty { current = "/" }
                continue
            default:
                break
            }
            let candidate = current == "/" ? "/" + component : current + "/" + component
            guard onDisk else {
                current = candidate
                continue
            }
            var info = stat()
            if lstat(candidate, &info) != 0 {
                onDisk = false
                current = candidate
            } else if info.st_mode & S_IFMT == S_IFLNK {
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: candidate)) ?? ""
                let remaining = components[(index + 1)...].joined(separator: "/")
                let followed = target.hasPrefix("/") ? target : (current == "/" ? "/" : current + "/") + target
                return try physicalPath(remaining.isEmpty ? followed : followed + "/" + remaining, from: "/", linksLeft: linksLeft - 1)
            } else {
                current = candidate
            }
        }
        return current
    }

    private static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}

/// The lines of this process's stdin, read on a thread of their own (never on the cooperative
/// pool), handed out one at a time as the agent asks for them.
public final class ScriptedAnswerLines: Sendable {
    private struct State {
        var lines: [String] = []
        var ended = false
        var waiter: CheckedContinuation<String?, Never>?
    }

    private let state = Mutex(State())

    /// Starts reading stdin.
    public init() {
        let thread = Thread { [self] in readAll() }
        thread.start()
    }

    private func readAll() {
        while let line = readLine(strippingNewline: true) {
            let waiter = state.withLock { state -> CheckedContinuation<String?, Never>? in
                if let waiter = state.waiter {
                    state.waiter = nil
                    return waiter
                }
                state.lines.append(line)
                return nil
            }
            waiter?.resume(returning: line)
        }
        let waiter = state.withLock { state -> CheckedContinuation<String?, Never>? in
            state.ended = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// The next line; nil at the end of stdin. One caller at a time.
    public func next() async -> String? {
        await withCheckedContinuation { continuation in
            let ready: String?? = state.withLock { state in
                if !state.lines.isEmpty { return .some(state.lines.removeFirst()) }
                if state.ended { return .some(nil) }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
