"""AWS building blocks of the aws-ec2 (and later eks) targets: network, security groups, IAM, GPU groups."""
