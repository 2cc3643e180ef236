# berth's workspace VM template, built by Packer's qemu builder from a cloud image (Ubuntu
# 22.04 by default; 24.04, or a Debian cloud image, through `base_image`). Provisioning is the
# plain shell steps in steps/, which image-build/build also runs in a chroot.
#
# Run it through image-build/packer-build, which makes the payload (berth, its units, the
# steps) and the seed (a throwaway `packer` user with a fresh key) and removes that user at
# the end. Written for Packer 1.6.6 as Debian packages it (HCL2, qemu builder built in, no
# `packer init`, seed through `cd_files`).

variable "base_image" {
  type        = string
  default     = "https://cloud-images.ubuntu.com/releases/22.04/release/ubuntu-22.04-server-cloudimg-amd64.img"
  description = "Cloud image to start from (URL or path): Ubuntu 22.04 (default), 24.04, or Debian 12/13 genericcloud."
}

variable "base_checksum" {
  type        = string
  default     = "file:https://cloud-images.ubuntu.com/releases/22.04/release/SHA256SUMS"
  description = "Packer iso_checksum of base_image (\"file:URL\", \"sha256:HEX\", or \"none\" for a local file you trust)."
}

variable "payload" {
  type        = string
  description = "Directory with bin/berth, units/, steps/ and catalog/ (made by packer-build)."
}

variable "seed_dir" {
  type        = string
  description = "Directory with the NoCloud user-data and meta-data for the build VM (made by packer-build)."
}

variable "ssh_private_key_file" {
  type = string
}

variable "desktop" {
  type        = string
  default     = "1"
  description = "\"1\": XFCE, LightDM and xrdp; \"0\": a server image without desktop."
}

variable "preload" {
  type        = string
  default     = ""
  description = "Service names whose images go into the shared image store (the demo always)."
}

variable "zed" {
  type        = string
  default     = ""
  description = "Path inside the payload of a Zed .deb or .tar.gz to install; empty skips it."
}

variable "accelerator" {
  type        = string
  default     = "tcg"
  description = "\"kvm\" on a build host with working KVM; \"tcg\" (software) elsewhere."
}

variable "disk_size" {
  type    = string
  default = "12G"
}

variable "output_dir" {
  type    = string
  default = "output-berth"
}

variable "vm_name" {
  type    = string
  default = "berth-workspace.qcow2"
}

source "qemu" "berth" {
  iso_url          = var.base_image
  iso_checksum     = var.base_checksum
  disk_image       = true
  use_backing_file = false
  format           = "qcow2"
  disk_size        = var.disk_size
  disk_compression = true
  accelerator      = var.accelerator
  cpus             = 2
  memory           = 4096
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  headless         = true
  cd_files         = ["${var.seed_dir}/user-data", "${var.seed_dir}/meta-data"]
  cd_label         = "cidata"
  ssh_username     = "packer"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout      = "30m"
  # The build user goes with the machine's last command, so the template has no trace of it.
  shutdown_command = "sudo sh -c 'userdel -f -r packer; rm -f /etc/sudoers.d/90-cloud-init-users; shutdown -P now'"
  output_directory = var.output_dir
  vm_name          = var.vm_name
}

build {
  sources = ["source.qemu.berth"]

  provisioner "shell" {
    inline = ["mkdir -p /tmp/berth-payload"]
  }

  provisioner "file" {
    source      = "${var.payload}/"
    destination = "/tmp/berth-payload"
  }

  provisioner "shell" {
    environment_vars = [
      "BERTH_PAYLOAD=/tmp/berth-payload",
      "BERTH_IMAGE_DESKTOP=${var.desktop}",
      "BERTH_IMAGE_PRELOAD=${var.preload}",
      "BERTH_IMAGE_ZED=${var.zed}",
    ]
    execute_command = "chmod +x {{ .Path }}; sudo -E env {{ .Vars }} bash {{ .Path }}"
    scripts = [
      "${path.root}/steps/00-base.sh",
      "${path.root}/steps/10-desktop.sh",
      "${path.root}/steps/20-remote-desktop.sh",
      "${path.root}/steps/30-podman.sh",
      "${path.root}/steps/40-berth.sh",
      "${path.root}/steps/50-images.sh",
      "${path.root}/steps/60-zed.sh",
      "${path.root}/steps/90-cleanup.sh",
    ]
  }

  provisioner "shell" {
    inline = ["sudo rm -rf /tmp/berth-payload"]
  }
}
