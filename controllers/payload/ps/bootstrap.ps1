# capwin bootstrap for a Windows Kubernetes worker (Windows PowerShell 5.1).
# Rendered by capwin; runs once from cloudbase-init's runcmd and is safe to run again.
# Every value comes from the parameters file next to this script: this file is code only.
# Exit codes: 0 joined (or already joined); 10-99 the failing step (see $Steps); never
# 1001-1003, which cloudbase-init reads as reboot requests.
param(
    [string]$ParamsPath = 'C:\run\capwin\bootstrap.json'
)

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
[Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12

$Steps = @{
    'preamble'   = 10
    'acl'        = 11
    'host'       = 20
    'binaries'   = 30
    'version'    = 31
    'containerd' = 40
    'network'    = 50
    'nodeip'     = 51
    'nodename'   = 52
    'kubelet'    = 60
    'users'      = 61
    'gmsa'       = 62
    'prekubeadm' = 65
    'apiserver'  = 70
    'join'       = 80
    'postjoin'   = 90
    'postkubeadm' = 91
}

$RunDir = 'C:\run\capwin'
$ClusterApiDir = 'C:\run\cluster-api'
$KubeadmDir = 'C:\run\kubeadm'
$LogDir = 'C:\var\log\capwin'
$Sentinel = Join-Path $ClusterApiDir 'bootstrap-success.complete'
$FailureFile = Join-Path $ClusterApiDir 'bootstrap-failure.json'
$JoinConfig = Join-Path $KubeadmDir 'kubeadm-join-config.yaml'
$KubeletFlagsEnv = 'C:\var\lib\kubelet\kubeadm-flags.env'
$Utf8 = New-Object System.Text.UTF8Encoding($false)
$script:CurrentStep = 'preamble'
$script:SerialPort = $null
$script:Redact = @()

function Write-Serial {
    param([string]$Line)
    if ($null -eq $script:SerialPort) {
        return
    }
    try {
        $port = New-Object System.IO.Ports.SerialPort($script:SerialPort, 115200, 'None', 8, 'One')
        $port.Open()
        $port.WriteLine($Line)
        $port.Close()
    } catch {
        # The serial console is best effort: a missing port must never fail a join.
    }
}

function Protect-Text {
    param([string]$Text)
    foreach ($secret in $script:Redact) {
        if ($secret) {
            $Text = $Text.Replace($secret, '<redacted>')
        }
    }
    return $Text
}

function Write-Log {
    param([string]$Message)
    # Write-Host, not Write-Output: log lines must never mix into a function's return value.
    $line = '{0} [{1}] {2}' -f (Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ'), $script:CurrentStep, (Protect-Text $Message)
    Write-Host $line
}

function Send-Progress {
    param([string]$Status, [string]$Message = '')
    $record = [ordered]@{ step = $script:CurrentStep; status = $Status; message = (Protect-Text $Message) }
    Write-Serial ('CAPWIN-BOOTSTRAP ' + ($record | ConvertTo-Json -Compress))
}

function Enter-Step {
    param([string]$Name)
    $script:CurrentStep = $Name
    Write-Log 'begin'
    Send-Progress 'running'
}

function Invoke-Native {
    # Runs a program and throws when it exits non-zero, with its output in the log.
    param([string]$FilePath, [string[]]$ArgumentList)
    # Windows PowerShell 5.1 turns a native program's stderr line into a terminating error when
    # the preference is Stop (kubeadm logs to stderr); judge by the exit code instead.
    $ErrorActionPreference = 'Continue'
    $output = & $FilePath @ArgumentList 2>&1 | ForEach-Object { Protect-Text ([string]$_) }
    $code = $LASTEXITCODE
    foreach ($l in $output) {
        Write-Log ('  ' + $l)
    }
    if ($code -ne 0) {
        throw ('{0} exited with code {1}' -f $FilePath, $code)
    }
    return $output
}

function Invoke-WithRetry {
    param([scriptblock]$Action, [int]$Attempts = 10, [int]$DelaySeconds = 5, [string]$What = 'operation')
    for ($i = 1; $i -le $Attempts; $i++) {
        try {
            return (& $Action)
        } catch {
            if ($i -eq $Attempts) {
                throw
            }
            Write-Log ('{0} failed (attempt {1}/{2}): {3}; retrying in {4}s' -f $What, $i, $Attempts, $_.Exception.Message, $DelaySeconds)
            Start-Sleep -Seconds $DelaySeconds
        }
    }
}

function Get-VerifiedDownload {
    # Downloads with retries to a temporary file and checks its SHA-256 before handing it back.
    param([string]$Url, [string]$Sha256, [string]$Destination)
    $tmp = $Destination + '.download'
    Invoke-WithRetry -What ('download ' + $Url) -Action {
        Invoke-Native 'curl.exe' @('--fail', '--silent', '--show-error', '--location', '--retry', '10', '--retry-delay', '5', '--output', $tmp, $Url) | Out-Null
    } | Out-Null
    $actual = (Get-FileHash -Algorithm SHA256 -LiteralPath $tmp).Hash.ToLowerInvariant()
    if ($actual -ne $Sha256) {
        Remove-Item -LiteralPath $tmp -Force
        throw ('checksum mismatch for {0}: expected {1}, got {2}' -f $Url, $Sha256, $actual)
    }
    Move-Item -LiteralPath $tmp -Destination $Destination -Force
}

function Set-PrivateAcl {
    # SYSTEM and Administrators only, by SID so it works on every display language.
    param([string]$Path)
    if (-not (Test-Path -LiteralPath $Path)) {
        return
    }
    if ((Get-Item -LiteralPath $Path).PSIsContainer) {
        Invoke-Native 'icacls.exe' @($Path, '/inheritance:r', '/grant:r', '*S-1-5-18:(OI)(CI)F', '*S-1-5-32-544:(OI)(CI)F', '/T', '/C', '/Q') | Out-Null
    } else {
        Invoke-Native 'icacls.exe' @($Path, '/inheritance:r', '/grant:r', '*S-1-5-18:F', '*S-1-5-32-544:F', '/C', '/Q') | Out-Null
    }
}

function Wait-Until {
    param([scriptblock]$Condition, [int]$TimeoutSeconds, [string]$What)
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    while ((Get-Date) -lt $deadline) {
        if (& $Condition) {
            return
        }
        Start-Sleep -Seconds 2
    }
    throw ('timed out after {0}s waiting for {1}' -f $TimeoutSeconds, $What)
}

function Get-Imds {
    # EC2 instance metadata: IMDSv2 when it answers, IMDSv1 otherwise.
    param([string]$Path)
    $headers = @{}
    try {
        $token = Invoke-RestMethod -UseBasicParsing -Method Put -Uri 'http://169.254.169.254/latest/api/token' -Headers @{ 'X-aws-ec2-metadata-token-ttl-seconds' = '300' } -TimeoutSec 5
        $headers['X-aws-ec2-metadata-token'] = $token
    } catch {
        Write-Log 'IMDSv2 token unavailable, using IMDSv1'
    }
    return (Invoke-RestMethod -UseBasicParsing -Uri ('http://169.254.169.254/latest/meta-data/' + $Path) -Headers $headers -TimeoutSec 10)
}

function Get-AzureImdsCompute {
    return (Invoke-RestMethod -UseBasicParsing -Uri 'http://169.254.169.254/metadata/instance/compute?api-version=2021-02-01' -Headers @{ Metadata = 'true' } -TimeoutSec 10)
}

function Get-PrimaryIPv4 {
    # The IPv4 address of the interface that owns the default route.
    $route = Get-NetRoute -DestinationPrefix '0.0.0.0/0' -AddressFamily IPv4 -ErrorAction SilentlyContinue | Sort-Object -Property RouteMetric | Select-Object -First 1
    if ($null -eq $route) {
        return $null
    }
    $address = Get-NetIPAddress -InterfaceIndex $route.ifIndex -AddressFamily IPv4 -ErrorAction SilentlyContinue | Where-Object { $_.PrefixOrigin -ne 'WellKnown' } | Select-Object -First 1
    if ($null -eq $address) {
        return $null
    }
    return $address.IPAddress
}

function Get-KubeletImagePath {
    $svc = Get-CimInstance -ClassName Win32_Service -Filter "Name='kubelet'"
    return $svc.PathName
}

function Set-KubeletImagePath {
    param([string]$PathName)
    $svc = Get-CimInstance -ClassName Win32_Service -Filter "Name='kubelet'"
    $result = Invoke-CimMethod -InputObject $svc -MethodName Change -Arguments @{ PathName = $PathName }
    if ($result.ReturnValue -ne 0) {
        throw ('changing the kubelet service command line failed with {0}' -f $result.ReturnValue)
    }
}

function Get-KubeadmFlagArgs {
    # kubeadm writes KUBELET_KUBEADM_ARGS="--a=b --c=d"; values never contain spaces.
    if (-not (Test-Path -LiteralPath $KubeletFlagsEnv)) {
        return @()
    }
    $text = [IO.File]::ReadAllText($KubeletFlagsEnv, $Utf8).Trim()
    $text = $text -replace '^KUBELET_KUBEADM_ARGS=', ''
    $text = $text.Trim('"')
    return @($text -split '\s+' | Where-Object { $_ -ne '' })
}

function Join-KubeletCommandLine {
    # The image's own command line, plus flags; later flags win in kubelet's parser.
    param([string]$Original, [string[]]$Flags)
    $extra = @($Flags | Where-Object { -not $Original.Contains(' ' + $_) })
    if ($extra.Count -eq 0) {
        return $Original
    }
    return ($Original + ' ' + ($extra -join ' '))
}

function Complete-Failure {
    param($ErrorRecord)
    $code = $Steps[$script:CurrentStep]
    if ($null -eq $code) {
        $code = 99
    }
    $message = Protect-Text ([string]$ErrorRecord.Exception.Message)
    Write-Log ('FAILED (exit {0}): {1}' -f $code, $message)
    Write-Log (Protect-Text ([string]$ErrorRecord.ScriptStackTrace))
    $failure = [ordered]@{
        step = $script:CurrentStep
        code = $code
        message = $message
        time = (Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ')
        log = $script:LogFile
    }
    try {
        New-Item -ItemType Directory -Force -Path $ClusterApiDir | Out-Null
        [IO.File]::WriteAllText($FailureFile, ($failure | ConvertTo-Json), $Utf8)
    } catch {
        Write-Log ('could not write the failure file: ' + $_.Exception.Message)
    }
    Send-Progress 'failed' $message
    return $code
}

# ---------------------------------------------------------------------------------------------
# Preamble: log to a known file, load parameters.
New-Item -ItemType Directory -Force -Path $LogDir, $ClusterApiDir, $RunDir | Out-Null
$script:LogFile = Join-Path $LogDir ('bootstrap-{0}.log' -f (Get-Date).ToUniversalTime().ToString('yyyyMMddTHHmmssZ'))
Start-Transcript -LiteralPath $script:LogFile -Append | Out-Null
$exitCode = 0
try {
    Enter-Step 'preamble'
    $P = [IO.File]::ReadAllText($ParamsPath, $Utf8) | ConvertFrom-Json
    if ($P.serialPort -ne 'none') {
        $script:SerialPort = $P.serialPort
    }
    if (Test-Path -LiteralPath $JoinConfig) {
        $tokenMatch = [regex]::Match([IO.File]::ReadAllText($JoinConfig, $Utf8), '([a-z0-9]{6})\.([a-z0-9]{16})')
        if ($tokenMatch.Success) {
            $script:Redact = @($tokenMatch.Groups[2].Value, $tokenMatch.Value)
        }
    }
    $build = Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
    Write-Log ('capwin bootstrap {0}; Windows build {1}.{2}; cloud {3}; Kubernetes {4}; CNI {5}' -f $P.capwinVersion, $build.CurrentBuildNumber, $build.UBR, $P.cloud, $P.kubernetesVersion, $P.cni.flavour)

    # Secret-bearing files first: the join config holds the bootstrap token.
    Enter-Step 'acl'
    foreach ($path in @($KubeadmDir, $RunDir, $LogDir)) {
        Set-PrivateAcl $path
    }
    foreach ($path in @($P.privateFiles)) {
        if ($path) {
            Set-PrivateAcl $path
        }
    }

    # Idempotency: a finished join, or one that finished but died before the sentinel.
    if (Test-Path -LiteralPath $Sentinel) {
        Write-Log 'already joined (sentinel present); nothing to do'
        Send-Progress 'succeeded' 'already joined'
        Stop-Transcript | Out-Null
        exit 0
    }
    if ((Test-Path -LiteralPath 'C:\etc\kubernetes\kubelet.conf') -and ((Get-Service -Name kubelet -ErrorAction SilentlyContinue).Status -eq 'Running')) {
        Write-Log 'kubelet.conf exists and kubelet runs: the join completed earlier; writing the sentinel'
        [IO.File]::WriteAllText($Sentinel, 'success', $Utf8)
        Send-Progress 'succeeded' 'already joined'
        Stop-Transcript | Out-Null
        exit 0
    }

    Enter-Step 'host'
    $principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
    if (-not $principal.IsInRole([Security.Principal.SecurityIdentifier]'S-1-5-32-544')) {
        throw 'the bootstrap must run elevated (member of Administrators)'
    }
    if ([int]$build.CurrentBuildNumber -ne [int]$P.windowsBuild) {
        throw ('the image is Windows build {0} but the config names Windows Server {1} (build {2})' -f $build.CurrentBuildNumber, $P.windowsVersion, $P.windowsBuild)
    }
    $containers = Get-WindowsOptionalFeature -Online -FeatureName Containers
    if ($containers.State -ne 'Enabled') {
        throw 'the Windows feature Containers is not enabled in the image'
    }
    foreach ($name in @('containerd', 'kubelet')) {
        if ($null -eq (Get-Service -Name $name -ErrorAction SilentlyContinue)) {
            throw ('the image has no {0} service' -f $name)
        }
    }
    if (-not (Test-Path -LiteralPath 'C:\k\kubeadm.exe')) {
        throw 'C:\k\kubeadm.exe is missing from the image'
    }

    Enter-Step 'binaries'
    if (@($P.binaries).Count -gt 0) {
        Stop-Service -Name kubelet -Force -ErrorAction SilentlyContinue
        foreach ($bin in @($P.binaries)) {
            $target = Join-Path 'C:\k' ($bin.name + '.exe')
            Write-Log ('replacing {0} from {1}' -f $target, $bin.url)
            Get-VerifiedDownload -Url $bin.url -Sha256 $bin.sha256 -Destination $target
        }
    }

    Enter-Step 'version'
    $kubeadmVersion = (Invoke-Native 'C:\k\kubeadm.exe' @('version', '-o', 'short') | Select-Object -Last 1).Trim()
    if ($kubeadmVersion -ne $P.kubernetesVersion) {
        throw ('kubeadm in the image is {0} but the Machine asks for {1}' -f $kubeadmVersion, $P.kubernetesVersion)
    }

    Enter-Step 'containerd'
    $containerdDir = 'C:\Program Files\containerd'
    $restartContainerd = $false
    if ($null -ne $P.containerd.download) {
        $dl = $P.containerd.download
        $tarball = Join-Path $RunDir 'containerd.tar.gz'
        Get-VerifiedDownload -Url $dl.url -Sha256 $dl.sha256 -Destination $tarball
        Stop-Service -Name kubelet -Force -ErrorAction SilentlyContinue
        Stop-Service -Name containerd -Force
        $unpack = Join-Path $RunDir 'containerd-unpack'
        New-Item -ItemType Directory -Force -Path $unpack | Out-Null
        Invoke-Native 'tar.exe' @('-xzf', $tarball, '-C', $unpack) | Out-Null
        Copy-Item -Path (Join-Path $unpack 'bin\*') -Destination $containerdDir -Force
        Remove-Item -LiteralPath $unpack, $tarball -Recurse -Force
        $restartContainerd = $true
    }
    $confD = Join-Path $containerdDir 'conf.d'
    $configToml = Join-Path $containerdDir 'config.toml'
    if (@($P.containerd.dropIns).Count -gt 0 -or $P.hyperV) {
        New-Item -ItemType Directory -Force -Path $confD | Out-Null
        $configText = ''
        if (Test-Path -LiteralPath $configToml) {
            $configText = [IO.File]::ReadAllText($configToml, $Utf8)
        }
        if ($configText -notmatch 'conf\.d') {
            Write-Log 'config.toml does not import conf.d; adding the import'
            $import = 'imports = ["C:\\Program Files\\containerd\\conf.d\\*.toml"]'
            [IO.File]::WriteAllText($configToml, ($import + "`r`n" + $configText), $Utf8)
        }
    }
    foreach ($dropIn in @($P.containerd.dropIns)) {
        $source = Join-Path $RunDir ('containerd-' + $dropIn + '.toml')
        Copy-Item -LiteralPath $source -Destination (Join-Path $confD ($dropIn + '.toml')) -Force
        $restartContainerd = $true
    }
    if ($P.hyperV) {
        $cs = Get-CimInstance -ClassName Win32_ComputerSystem
        if (-not $cs.HypervisorPresent) {
            throw 'Hyper-V isolation was requested but no hypervisor is present (nested virtualisation off, or an image built with disable_hypervisor)'
        }
        $ctrVersion = (Invoke-Native (Join-Path $containerdDir 'containerd.exe') @('--version') | Select-Object -Last 1)
        $runtimes = "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes"
        $header = 'version = 3'
        if ($ctrVersion -match ' v?1\.') {
            $runtimes = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
            $header = 'version = 2'
        }
        $toml = @(
            $header,
            ('[{0}.runhcs-wcow-hypervisor]' -f $runtimes),
            '  runtime_type = "io.containerd.runhcs.v1"',
            ('[{0}.runhcs-wcow-hypervisor.options]' -f $runtimes),
            '  SandboxIsolation = 1',
            '  ScaleCPULimitsToSandbox = true'
        ) -join "`r`n"
        [IO.File]::WriteAllText((Join-Path $confD 'capwin-hyperv.toml'), $toml, $Utf8)
        $restartContainerd = $true
    }
    $serviceKey = 'HKLM:\SYSTEM\CurrentControlSet\Services\containerd'
    if (@($P.containerd.proxyEnvironment).Count -gt 0) {
        # Service-scoped environment: SCM passes these to containerd only.
        Set-ItemProperty -Path $serviceKey -Name Environment -Type MultiString -Value ([string[]]@($P.containerd.proxyEnvironment))
        $restartContainerd = $true
    }
    foreach ($svc in @('containerd', 'kubelet')) {
        Invoke-Native 'sc.exe' @('failure', $svc, 'reset=', '900', 'actions=', 'restart/10000/restart/30000/restart/60000') | Out-Null
    }
    if ($restartContainerd) {
        Restart-Service -Name containerd -Force
    }
    Set-Service -Name containerd -StartupType Automatic
    if ((Get-Service -Name containerd).Status -ne 'Running') {
        Start-Service -Name containerd
    }
    Wait-Until -TimeoutSeconds 120 -What 'the containerd named pipe' -Condition { Test-Path -LiteralPath '\\.\pipe\containerd-containerd' }

    Enter-Step 'network'
    $cni = $P.cni
    if ($cni.flavour -eq 'calico-vxlan' -or $cni.flavour -eq 'flannel-vxlan') {
        if ($null -eq (Get-NetFirewallRule -Name 'capwin-vxlan-4789' -ErrorAction SilentlyContinue)) {
            New-NetFirewallRule -Name 'capwin-vxlan-4789' -DisplayName 'capwin VXLAN overlay (UDP 4789)' -Direction Inbound -Protocol UDP -LocalPort $cni.vxlanPort -Action Allow | Out-Null
        }
    }
    if ($cni.flavour -eq 'flannel-vxlan' -or $cni.flavour -eq 'flannel-host-gw') {
        # flannel misbehaves when it creates the first HNS network itself; a throw-away External
        # network makes the vSwitch once, up front (the connectivity blip happens here).
        $hnsType = 'L2Bridge'
        if ($cni.flavour -eq 'flannel-vxlan') {
            $hnsType = 'Overlay'
        }
        if (Test-Path -LiteralPath 'C:\k\debug\hns.psm1') {
            Import-Module 'C:\k\debug\hns.psm1' -DisableNameChecking
        } else {
            Import-Module HostNetworkingService -DisableNameChecking
        }
        if ($null -eq (Get-HnsNetwork | Where-Object { $_.Name -eq 'External' })) {
            $ipBefore = Get-PrimaryIPv4
            $adapter = Get-NetAdapter -Physical | Where-Object { $_.Status -eq 'Up' } | Select-Object -First 1
            Write-Log ('creating the External {0} HNS network on {1}' -f $hnsType, $adapter.Name)
            if ($hnsType -eq 'Overlay') {
                New-HnsNetwork -Type $hnsType -AddressPrefix '192.168.255.0/30' -Gateway '192.168.255.1' -Name 'External' -AdapterName $adapter.Name -SubnetPolicies @(@{ Type = 'VSID'; VSID = 9999 }) | Out-Null
            } else {
                New-HnsNetwork -Type $hnsType -AddressPrefix '192.168.255.0/30' -Gateway '192.168.255.1' -Name 'External' -AdapterName $adapter.Name | Out-Null
            }
            Wait-Until -TimeoutSeconds 60 -What 'the node IP to return after the vSwitch was created' -Condition { (Get-PrimaryIPv4) -eq $ipBefore }
        }
    }
    if ($cni.flavour -ne 'none') {
        # Creating a vSwitch drops the instance-metadata route; cloud agents need it back.
        if ($null -eq (Get-NetRoute -DestinationPrefix '169.254.169.254/32' -ErrorAction SilentlyContinue)) {
            Invoke-Native 'route.exe' @('/p', 'add', '169.254.169.254', 'mask', '255.255.255.255', '0.0.0.0') | Out-Null
        }
    }
    # Keep ephemeral ports clear of the NodePort range 30000-32767 (images usually do this).
    $range = Invoke-Native 'netsh.exe' @('int', 'ipv4', 'show', 'dynamicportrange', 'tcp')
    $startMatch = [regex]::Match(($range -join "`n"), ':\s*(\d+)')
    if (-not $startMatch.Success) {
        Write-Log 'could not read the TCP dynamic port range; leaving it as it is'
    } elseif ([int]$startMatch.Groups[1].Value -lt 33000) {
        Invoke-Native 'netsh.exe' @('int', 'ipv4', 'set', 'dynamicportrange', 'tcp', '34000', '31536') | Out-Null
    }

    Enter-Step 'nodeip'
    $nodeIP = $null
    Wait-Until -TimeoutSeconds 120 -What 'an IPv4 address on the default-route interface' -Condition {
        $script:candidate = Get-PrimaryIPv4
        return ($null -ne $script:candidate)
    }
    $nodeIP = [string]$script:candidate
    [void][Net.IPAddress]::Parse($nodeIP)
    Write-Log ('node IP {0}' -f $nodeIP)

    Enter-Step 'nodename'
    $providerID = ''
    if ($P.nodeName) {
        $nodeName = $P.nodeName
    } elseif ($P.cloud -eq 'aws') {
        $nodeName = ([string](Get-Imds 'local-hostname')).Trim().ToLowerInvariant()
    } else {
        $nodeName = $env:COMPUTERNAME.ToLowerInvariant()
    }
    if ($P.setProviderID) {
        if ($P.cloud -eq 'aws') {
            $zone = ([string](Get-Imds 'placement/availability-zone')).Trim()
            $instance = ([string](Get-Imds 'instance-id')).Trim()
            $providerID = 'aws:///{0}/{1}' -f $zone, $instance
        } elseif ($P.cloud -eq 'azure') {
            $providerID = 'azure://' + [string](Get-AzureImdsCompute).resourceId
        }
        if ($providerID -notmatch '^(aws|azure):///[A-Za-z0-9/._-]+$') {
            throw ('the instance metadata gave an unusable provider ID: {0}' -f $providerID)
        }
    }
    if ($nodeName -notmatch '^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$') {
        throw ('{0} is not a valid node name (RFC 1123, at most 63 characters)' -f $nodeName)
    }
    Write-Log ('node name {0}; computer name {1}; provider ID {2}' -f $nodeName, $env:COMPUTERNAME, $providerID)
    $template = [IO.File]::ReadAllText($JoinConfig, $Utf8)
    $rendered = $template.Replace('@@CAPWIN_NODE_NAME@@', $nodeName).Replace('@@CAPWIN_NODE_IP@@', $nodeIP).Replace('@@CAPWIN_PROVIDER_ID@@', $providerID)
    [IO.File]::WriteAllText($JoinConfig, $rendered, $Utf8)

    Enter-Step 'kubelet'
    $imagePath = Get-KubeletImagePath
    $originalPathFile = Join-Path $RunDir 'kubelet-imagepath.orig'
    if (-not (Test-Path -LiteralPath $originalPathFile)) {
        [IO.File]::WriteAllText($originalPathFile, $imagePath, $Utf8)
    }
    $originalPath = [IO.File]::ReadAllText($originalPathFile, $Utf8)
    $kubeletFlags = @($P.kubeletFlags | ForEach-Object { $_.Replace('@@CAPWIN_NODE_NAME@@', $nodeName).Replace('@@CAPWIN_NODE_IP@@', $nodeIP).Replace('@@CAPWIN_PROVIDER_ID@@', $providerID) })
    $nativeService = $originalPath -match '--windows-service'
    if ($nativeService) {
        # kubelet is its own service here and never reads kubeadm-flags.env: give the service the
        # flags kubeadm will write, before the join, so the Node registers with them.
        Write-Log 'kubelet runs as a native service; adding the join flags to its command line'
        Set-KubeletImagePath (Join-KubeletCommandLine -Original $originalPath -Flags $kubeletFlags)
    } else {
        Write-Log 'kubelet service reads kubeadm-flags.env through its wrapper'
    }
    Invoke-Native 'sc.exe' @('config', 'kubelet', 'depend=', 'containerd', 'start=', 'auto') | Out-Null
    Stop-Service -Name kubelet -Force -ErrorAction SilentlyContinue

    Enter-Step 'users'
    foreach ($key in @($P.adminAuthorizedKeys)) {
        if ($key) {
            $adminKeys = 'C:\ProgramData\ssh\administrators_authorized_keys'
            New-Item -ItemType Directory -Force -Path 'C:\ProgramData\ssh' | Out-Null
            $existing = ''
            if (Test-Path -LiteralPath $adminKeys) {
                $existing = [IO.File]::ReadAllText($adminKeys, $Utf8)
            }
            if (-not $existing.Contains($key)) {
                [IO.File]::AppendAllText($adminKeys, ($key + "`r`n"), $Utf8)
            }
            Set-PrivateAcl $adminKeys
        }
    }

    Enter-Step 'gmsa'
    if ($P.gmsa.enabled) {
        $ccgKey = 'HKLM:\SYSTEM\CurrentControlSet\Control\CCG\COMClasses'
        if ($null -ne $P.gmsa.plugin) {
            $dll = Join-Path $env:SystemRoot ('System32\capwin-ccg-' + $P.gmsa.plugin.sha256.Substring(0, 12) + '.dll')
            Get-VerifiedDownload -Url $P.gmsa.plugin.url -Sha256 $P.gmsa.plugin.sha256 -Destination $dll
            Invoke-Native 'regsvr32.exe' @('/s', $dll) | Out-Null
            New-Item -Force -Path (Join-Path $ccgKey $P.gmsa.plugin.clsid) | Out-Null
        }
        if (@(Get-ChildItem -Path $ccgKey -ErrorAction SilentlyContinue).Count -eq 0) {
            throw 'gMSA was requested but no Container Credential Guard plugin is registered'
        }
    }

    Enter-Step 'prekubeadm'
    $index = 0
    foreach ($command in @($P.preKubeadmCommands)) {
        $index++
        Write-Log ('preKubeadmCommands[{0}]' -f ($index - 1))
        $global:LASTEXITCODE = 0
        & ([scriptblock]::Create($command))
        if ($LASTEXITCODE -ne 0) {
            throw ('preKubeadmCommands[{0}] ended with exit code {1}' -f ($index - 1), $LASTEXITCODE)
        }
    }

    Enter-Step 'apiserver'
    $endpoint = $P.apiServerEndpoint
    $hostPart = $endpoint.Substring(0, $endpoint.LastIndexOf(':')).Trim('[', ']')
    $portPart = [int]$endpoint.Substring($endpoint.LastIndexOf(':') + 1)
    Invoke-WithRetry -Attempts 60 -DelaySeconds 10 -What ('TCP connect to ' + $endpoint) -Action {
        $client = New-Object System.Net.Sockets.TcpClient
        try {
            $async = $client.BeginConnect($hostPart, $portPart, $null, $null)
            if (-not $async.AsyncWaitHandle.WaitOne(10000)) {
                throw 'connect timed out'
            }
            $client.EndConnect($async)
        } finally {
            $client.Close()
        }
    } | Out-Null

    Enter-Step 'join'
    $joinArgs = @('join', '--config', $JoinConfig, ('-v={0}' -f $P.verbosity))
    for ($attempt = 1; $attempt -le $P.joinAttempts; $attempt++) {
        try {
            Write-Log ('kubeadm join, attempt {0}/{1}' -f $attempt, $P.joinAttempts)
            Invoke-Native 'C:\k\kubeadm.exe' $joinArgs | Out-Null
            break
        } catch {
            if ($attempt -eq $P.joinAttempts) {
                throw
            }
            Write-Log ('kubeadm join failed: {0}; resetting before the next attempt' -f $_.Exception.Message)
            try {
                Invoke-Native 'C:\k\kubeadm.exe' @('reset', '--force') | Out-Null
            } catch {
                Write-Log ('kubeadm reset failed: ' + $_.Exception.Message)
            }
            Start-Sleep -Seconds ([Math]::Min(120, 15 * $attempt))
        }
    }

    Enter-Step 'postjoin'
    if ($nativeService) {
        # kubeadm-flags.env is the authority after the join; bring the service in line with it.
        $wanted = Join-KubeletCommandLine -Original $originalPath -Flags (@($kubeletFlags) + @(Get-KubeadmFlagArgs))
        if ($wanted -ne (Get-KubeletImagePath)) {
            Write-Log 'kubeadm wrote kubelet flags beyond the ones set before the join; restarting kubelet with them'
            Set-KubeletImagePath $wanted
            Restart-Service -Name kubelet -Force
        }
    }
    Wait-Until -TimeoutSeconds 120 -What 'the kubelet service to run' -Condition { (Get-Service -Name kubelet).Status -eq 'Running' }
    if (Get-Command -Name Add-MpPreference -ErrorAction SilentlyContinue) {
        foreach ($process in @($P.defender.processes)) {
            if ($process) {
                Add-MpPreference -ExclusionProcess $process
            }
        }
        foreach ($path in @($P.defender.paths)) {
            if ($path) {
                Add-MpPreference -ExclusionPath $path
            }
        }
    } else {
        Write-Log 'Microsoft Defender is not installed; no exclusions to add'
    }

    Enter-Step 'postkubeadm'
    $index = 0
    foreach ($command in @($P.postKubeadmCommands)) {
        $index++
        Write-Log ('postKubeadmCommands[{0}]' -f ($index - 1))
        $global:LASTEXITCODE = 0
        & ([scriptblock]::Create($command))
        if ($LASTEXITCODE -ne 0) {
            throw ('postKubeadmCommands[{0}] ended with exit code {1}' -f ($index - 1), $LASTEXITCODE)
        }
    }

    # The join config holds the bootstrap token; it has done its job.
    Remove-Item -LiteralPath $JoinConfig -Force -ErrorAction SilentlyContinue
    Remove-Item -LiteralPath $FailureFile -Force -ErrorAction SilentlyContinue
    [IO.File]::WriteAllText($Sentinel, 'success', $Utf8)
    $script:CurrentStep = 'done'
    Write-Log 'joined'
    Send-Progress 'succeeded' ('node ' + $nodeName)
} catch {
    $exitCode = Complete-Failure $_
}
Stop-Transcript | Out-Null
exit $exitCode
