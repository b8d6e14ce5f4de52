import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A process started by `ProcessControl.spawnDetached`. `startTime` (field 22 of
/// `/proc/<pid>/stat`, in clock ticks since boot) tells it apart from a later process that
/// reuses the pid.
public struct SpawnedProcess: Sendable, Codable, Equatable {
    public var pid: Int32
    public var startTime: UInt64

    public init(pid: Int32, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }
}

/// Why a process could not be started.
public struct SpawnError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// Starting long-lived processes detached from the control plane, and stopping whole process
/// groups. Linux only: liveness is read from `/proc`.
public enum ProcessControl {
    /// Starts `argv` with `posix_spawn` in a new session (`POSIX_SPAWN_SETSID`: its own session
    /// and process group, pgid == pid), so that a control-plane restart or crash does not take
    /// it down. Its stdin is a pipe holding `stdin` (then closed: the runtime reads its secret
    /// from it), its stdout and stderr are appended to `logFile`, its environment is exactly
    /// `environment`, signal dispositions and mask are reset to the defaults, and it inherits no
    /// other descriptor. `argv[0]` without a slash is looked up on `environment`'s PATH (the
    /// control plane's when it has none). `stdin` is written before the process starts, so it
    /// must be small (at most 60,000 bytes).
    public static func spawnDetached(
        argv: [String],
        environment: [String: String],
        workingDirectory: URL,
        stdin: String?,
        logFile: URL
    ) throws -> SpawnedProcess {
        let pid = try spawn(argv: argv, environment: environment, workingDirectory: workingDirectory, stdin: stdin, logFile: logFile)
        // The child exists until reaped (a zombie still has its stat), so this read succeeds.
        let startTime = ProcStat.read(pid)?.startTime ?? 0
        return SpawnedProcess(pid: pid, startTime: startTime)
    }

    /// False when the process is gone, a zombie, or its pid now belongs to another process.
    public static func isAlive(_ process: SpawnedProcess) -> Bool {
        guard let stat = ProcStat.read(process.pid) else { return false }
        return stat.isRunning && stat.startTime == process.startTime
    }

    /// Reaps `pid` if it is an exited child of this process: its raw wait status (decode it with
    /// `exitCode(fromWaitStatus:)`), or nil while it runs (or when it is not our child).
    public static func reapIfExited(_ pid: Int32) -> Int32? {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        guard result == pid else { return nil }
        return status
    }

    /// A wait status as a shell shows it: the exit code, or 128 + N when killed by signal N.
    public static func exitCode(fromWaitStatus status: Int32) -> Int32 {
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    // MARK: - posix_spawn

    /// The glibc value of `POSIX_SPAWN_SETSID` (2.26+), which Swift's Glibc module does not
    /// import (it is behind `_GNU_SOURCE`).
    private static let spawnSetSID: Int32 = 0x80

    static func spawn(
        argv: [String],
        environment: [String: String],
        workingDirectory: URL,
        stdin: String?,
        logFile: URL
    ) throws -> pid_t {
        guard let program = argv.first else { throw SpawnError(description: "no program to start") }
        guard let executable = ExecutableLookup.find(program, path: environment["PATH"]) else {
            throw SpawnError(description: "\(program): not found")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: workingDirectory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw SpawnError(description: "working directory \(workingDirectory.path) does not exist")
        }
        let input = Array((stdin ?? "").utf8)
        // The input is written before the child starts, so it must fit in the pipe's buffer.
        guard input.count <= 60_000 else { throw SpawnError(description: "stdin too large (\(input.count) bytes)") }

        try FileManager.default.createDirectory(at: logFile.deletingLastPathComponent(), withIntermediateDirectories: true)
        let logFD = open(logFile.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard logFD >= 0 else { throw SpawnError(description: "cannot open \(logFile.path): \(errnoText())") }
        defer { close(logFD) }

        let (pipeRead, pipeWrite) = try cloexecPipe()
        defer { close(pipeRead) }
        // Writing while we still hold the read end can neither block (it fits) nor raise SIGPIPE.
        var written = 0
        while written < input.count {
            let count = input[written...].withUnsafeBytes { write(pipeWrite, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                let text = errnoText()
                close(pipeWrite)
                throw SpawnError(description: "cannot write stdin: \(text)")
            }
            written += count
        }
        close(pipeWrite)

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeRead, 0)
        posix_spawn_file_actions_adddup2(&actions, logFD, 1)
        posix_spawn_file_actions_adddup2(&actions, logFD, 2)
        guard let addChdir = GlibcExtensions.addChdir else {
            throw SpawnError(description: "posix_spawn_file_actions_addchdir_np is not available (glibc < 2.29)")
        }
        let chdirResult = workingDirectory.path.withCString { addChdir(&actions, $0) }
        guard chdirResult == 0 else { throw SpawnError(description: "cannot set the working directory: \(errnoText(chdirResult))") }
        // The control plane's other descriptors (listening sockets, the database) must not leak
        // into a process that outlives it.
        if let closeFrom = GlibcExtensions.addCloseFrom {
            _ = closeFrom(&actions, 3)
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaultSignals = sigset_t()
        sigfillset(&defaultSignals)
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        posix_spawnattr_setflags(&attributes, Int16(spawnSetSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let cArguments = argv.map { strdup($0) }
        let cEnvironment = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") }
        defer {
            cArguments.forEach { free($0) }
            cEnvironment.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = executable.withCString { path in
            posix_spawn(&pid, path, &actions, &attributes, cArguments + [nil], cEnvironment + [nil])
        }
        guard result == 0 else { throw SpawnError(description: "cannot start \(executable): \(errnoText(result))") }
        return pid
    }

    private static func cloexecPipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        let result: Int32
        if let pipe2 = GlibcExtensions.pipe2 {
            result = fds.withUnsafeMutableBufferPointer { pipe2($0.baseAddress, O_CLOEXEC) }
        } else {
            result = pipe(&fds)
            if result == 0 {
                _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
                _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
            }
        }
        guard result == 0 else { throw SpawnError(description: "cannot create a pipe: \(errnoText())") }
        return (fds[0], fds[1])
    }

    static func errnoText(_ code: Int32 = errno) -> String {
        String(cString: strerror(code))
    }
}

/// glibc functions that Swift's Glibc module does not import (they are behind `_GNU_SOURCE`),
/// looked up at run time as swift-subprocess does.
private enum GlibcExtensions {
    typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, UnsafePointer<CChar>?) -> Int32
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
    typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32

    static var addChdir: AddChdir? { symbol("posix_spawn_file_actions_addchdir_np") }
    static var addCloseFrom: AddCloseFrom? { symbol("posix_spawn_file_actions_addclosefrom_np") }
    static var pipe2: Pipe2? { symbol("pipe2") }

    private static func symbol<T>(_ name: String) -> T? {
        guard let address = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
        return unsafeBitCast(address, to: T.self)
    }
}

/// One process's `/proc/<pid>/stat`.
struct ProcStat: Sendable, Equatable {
    var pid: Int32
    /// R, S, D, Z, T, …
    var state: Character
    var parent: Int32 = 0
    var processGroup: Int32
    var session: Int32 = 0
    var startTime: UInt64

    /// Not a zombie, not dead.
    var isRunning: Bool { state != "Z" && state != "X" && state != "x" }

    static func read(_ pid: Int32) -> ProcStat? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return nil }
        return parse(String(decoding: data, as: UTF8.self), pid: pid)
    }

    /// The command name (field 2) is in parentheses and may hold spaces and parentheses itself:
    /// the fields that follow start after the last `)`.
    static func parse(_ text: String, pid: Int32) -> ProcStat? {
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        // fields[0] is field 3 (state), so field N is fields[N - 3].
        guard fields.count > 19, let state = fields[0].first, let parent = Int32(fields[1]),
            let group = Int32(fields[2]), let session = Int32(fields[3]), let start = UInt64(fields[19])
        else { return nil }
        return ProcStat(pid: pid, state: state, parent: parent, processGroup: group, session: session, startTime: start)
    }

    /// Every process visible in `/proc`; nil when `/proc` cannot be read. Processes that end
    /// during the scan are left out (Foundation's directory listing may fail on them instead).
    static func all() -> [ProcStat]? {
        guard let directory = opendir("/proc") else { return nil }
        defer { closedir(directory) }
        var pids: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let pid = Int32(name) { pids.append(pid) }
        }
        return pids.compactMap { read($0) }
    }
}

/// Finds a program on a PATH, as a shell would: `program` itself when it contains a `/`, else
/// the first executable file of that name in `path` (this process's PATH when nil).
public enum ExecutableLookup {
    public static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    public static func find(_ program: String, path: String? = nil) -> String? {
        if program.contains("/") {
            return FileManager.default.isExecutableFile(atPath: program) ? program : nil
        }
        let searchPath = path ?? ProcessInfo.processInfo.environment["PATH"] ?? defaultPath
        for directory in searchPath.split(separator: ":") where !directory.isEmpty {
            let candidate = "\(directory)/\(program)"
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: candidate, isDirectory: &isDirectory), !isDirectory.boolValue,
                FileManager.default.isExecutableFile(atPath: candidate)
            {
                return candidate
            }
        }
        return nil
    }
}
